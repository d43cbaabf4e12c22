import {
  safeParse,
  ZodDefault,
  ZodDiscriminatedUnion,
  ZodNullable,
  ZodObject,
  ZodOptional,
  ZodPrefault,
  type core,
} from 'zod'

/*
 * Walking ConfigSchema alongside an input: for the units of a config the schema refused
 * (checks.ts), for the durations of a copied config and for "did you mean" hints (load.ts).
 */

/** `schema` without the optional(), default(), prefault() and nullable() around it. */
export function bare (schema: core.$ZodType): core.$ZodType {
  let s = schema
  while (
    s instanceof ZodOptional || s instanceof ZodDefault || s instanceof ZodPrefault ||
    s instanceof ZodNullable
  ) s = s.unwrap()
  return s
}

/** The option of a discriminated union that `value` names (providers and stores by `kind`). */
export function optionFor (union: ZodDiscriminatedUnion, value: unknown): ZodObject | undefined {
  const key = union._zod.def.discriminator
  const named = isMapping(value) ? value[key] : undefined
  for (const o of union.options) {
    const tag = o instanceof ZodObject ? o.shape[key] : undefined
    if (tag !== undefined && safeParse(tag, named).success) return o as ZodObject
  }
  return undefined
}

export function isMapping (v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}
