/* expect.h - the check macro of the plan tests: EXPECT(cond, fmt, ...)
 * counts a check, and on failure counts it in fails and prints the place
 * and the message. Includes nothing of spa, so a test that links libspa
 * alone can use it. */
#ifndef SPA_TEST_EXPECT_H
#define SPA_TEST_EXPECT_H

#include <stdio.h>

static int fails, checks;
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            fails++;                                                                               \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

#endif
