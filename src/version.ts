/** The package version (checked against package.json by a unit test); plugins declare a range of it. */
export const VERSION = '0.1.0'
