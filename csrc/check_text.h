// check_text.h - numbers and shapes as text, for the messages of our TORCH_CHECKs.
//
// TORCH_CHECK(cond, a, b, ...) builds its message by inserting a, b, ... into a std::ostringstream, with code
// inlined into this extension. On the H200 machine (torch 2.11 wheel, extension built there by the image's
// g++ with GCC 13 headers) inserting an *integer* that way crashed the process with SIGSEGV inside
// std::ostream::_M_insert<long> (cuda-gdb backtrace, 2026-11-28) instead of raising: every failed argument
// check with a number in its message, CPU and CUDA ops alike. Strings inserted the same way were fine, and so
// were torch's own messages, which are formatted inside libtorch. So our messages never hand the stream a
// number: each number and shape becomes a std::string first, through std::to_string (snprintf, no iostreams).
// Same text as the stream would print ("96", "[2, 256]").
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace minimoe {

inline std::string as_text(int64_t value) { return std::to_string(value); }

inline std::string as_text(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(sizes[i]);
  }
  return out + "]";
}

}  // namespace minimoe
