#include "tandem/check.h"

#include <cstdio>
#include <cstdlib>

namespace tandem::internal {

void CheckFailed(const char* file, int line, const char* condition, const std::string& message) {
  // Straight to stderr: stdout carries results, and the logger may not be set up (or be the cause).
  std::fprintf(stderr, "CHECK failed at %s:%d: %s %s\n", file, line, condition, message.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace tandem::internal
