/* Stand-in libnvparsers (TensorRT 8.x only): the Caffe / UFF parser entry points the 8.6
 * bindings link. They are C++ functions, so they are defined here under their mangled names
 * (as `nm -D --undefined-only` prints them); each creates nothing. */
#include <stddef.h>

void *nvuffparser_createUffParser(void) __asm__("_ZN11nvuffparser15createUffParserEv");
void *nvuffparser_createUffParser(void) { return NULL; }

/* nvuffparser::FieldMap::FieldMap(char const*, void const*, nvuffparser::FieldType, int) */
void nvuffparser_FieldMap_ctor(void *self, const char *name, const void *data, int type, int length)
    __asm__("_ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi");
void nvuffparser_FieldMap_ctor(void *self, const char *name, const void *data, int type, int length)
{
    (void)self; (void)name; (void)data; (void)type; (void)length;
}

void *nvcaffeparser1_createCaffeParser(void) __asm__("_ZN14nvcaffeparser117createCaffeParserEv");
void *nvcaffeparser1_createCaffeParser(void) { return NULL; }

void nvcaffeparser1_shutdownProtobufLibrary(void) __asm__("_ZN14nvcaffeparser123shutdownProtobufLibraryEv");
void nvcaffeparser1_shutdownProtobufLibrary(void) {}
