/*
 * Why a gateway touches the C allocator's settings.
 *
 * glibc's malloc hands memory back to the kernel (trims the top of its heap) whenever more
 * than its trim threshold, 128 KiB by default, lies free there. A streamed request body
 * reaches JavaScript as one malloc'd 64 KiB copy per chunk (Node's HTTP parser copies each
 * body chunk out of the socket's read buffer), and V8 frees those copies in batches, at each
 * garbage collection. With the default thresholds every batch is trimmed and the next one
 * faults the same pages back in, zero-filled: on this project's bench machine a 1 GiB upload
 * cost 2.3-2.7 s of gateway CPU per GB instead of 0.8-0.9, and ran at 0.4-0.6x the speed.
 * Whether a given Node process falls into this depends on what else lies at the top of its
 * heap, so other Node proxies flip between the two speeds from one start to the next.
 *
 * glibc raises both thresholds itself the first time it frees a chunk it had mmap'd that is
 * larger than the current mmap threshold (the mmap threshold becomes that chunk's size, up to
 * 32 MiB, and the trim threshold twice that: "dynamic mmap threshold", mallopt(3)). So one
 * 8 MiB allocation, freed by the next garbage collection, settles them at 8 and 16 MiB: the
 * batches stay in the heap and are reused. The cost is up to 16 MiB of freed memory per
 * malloc arena kept for reuse rather than returned, and allocations of 128 KiB-8 MiB served
 * from the heap. It is done by `gatehouse start`; a program embedding createGateway() owns its
 * process and may call this itself.
 * MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ in the environment turn the adjustment
 * off, as glibc documents, and then this does nothing. Other allocators ignore it too.
 */

const NUDGE = 8 * 1024 * 1024

/** Let glibc settle its heap thresholds for streaming (see above). Once, at process start. */
export function settleMallocThresholds (): void {
  if (process.platform !== 'linux') return
  // allocUnsafeSlow: one malloc of its own (not Node's pooled slab), above the 128 KiB mmap
  // threshold. Touched so the allocation is real; dropped at once, freed by the next GC.
  const nudge = Buffer.allocUnsafeSlow(NUDGE)
  nudge[0] = 1
}
