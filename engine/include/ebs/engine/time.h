// Wall-clock time as the records and the AWS-facing output use it.
#pragma once

#include <cstdint>
#include <string>

namespace ebs {

// Milliseconds since the Unix epoch.
int64_t NowMs();
// ISO 8601 UTC with milliseconds, as AWS prints times ("" for 0).
std::string FormatTime(int64_t unix_ms);

}  // namespace ebs
