/* Stand-in libnvinfer_plugin: plugin registration reports failure. */
#include <stdbool.h>

bool initLibNvInferPlugins(void *logger, const char *name_space) { (void)logger; (void)name_space; return false; }
