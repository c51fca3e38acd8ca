/* version.c - the library's version at run time, and what bindings need to
 * know about its structs.
 *
 * SPA_GIT_VERSION comes from CMake's project(VERSION); the header's
 * SPA_VERSION_* macros are checked against it by tests/install, so a
 * program can compare what it was compiled with and what it runs on.
 */
#include "spa.h"

#ifndef SPA_GIT_VERSION
#define SPA_GIT_VERSION SPA_VERSION
#endif

const char *spa_version(void) { return SPA_GIT_VERSION; }

size_t spa_config_sizeof(void) { return sizeof(spa_config); }
