/* Found with CGO_CFLAGS=-I${build_dir}/includes. */
static const char *greeting(void) { return "from C"; }
