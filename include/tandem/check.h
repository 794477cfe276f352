// TANDEM_CHECK: for broken invariants only (never for anything a user or a peer can cause).
// A failed check logs the condition, location and message, then aborts.
#pragma once

#include <sstream>
#include <string>

namespace tandem::internal {

[[noreturn]] void CheckFailed(const char* file, int line, const char* condition,
                              const std::string& message);

// Collects the streamed message of a failed check, then aborts in its destructor.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition)
      : file_(file), line_(line), condition_(condition) {}
  [[noreturn]] ~CheckFailure() { CheckFailed(file_, line_, condition_, stream_.str()); }
  std::ostream& stream() { return stream_; }

 private:
  const char* file_;
  int line_;
  const char* condition_;
  std::ostringstream stream_;
};

// Makes the streamed expression void so it fits in the ?: of TANDEM_CHECK (glog's trick), which
// keeps `if (x) TANDEM_CHECK(y);` free of dangling-else surprises.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace tandem::internal

#define TANDEM_CHECK(cond)                 \
  (cond) ? (void)0                         \
         : ::tandem::internal::Voidify() & \
               ::tandem::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#define TANDEM_CHECK_EQ(a, b) TANDEM_CHECK((a) == (b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
#define TANDEM_CHECK_LE(a, b) TANDEM_CHECK((a) <= (b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
#define TANDEM_CHECK_LT(a, b) TANDEM_CHECK((a) < (b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
#define TANDEM_CHECK_GE(a, b) TANDEM_CHECK((a) >= (b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
