// Human sizes for the CLI and for messages: "10G" in, "10 GiB" out.
// All units are binary (K = KiB = 1024 bytes), as EBS sizes are in GiB.
// Pure functions, no I/O: safe for concurrent use.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ebs/engine/status.h"

namespace ebs {

// Parses a byte count: plain digits ("1073741824") or digits followed by a
// unit K, M, G, T or P, each optionally followed by "iB" or "B" ("512M",
// "10G", "10GiB", "1T", "4kb"); "B"/"bytes" mean bytes. Case-insensitive;
// spaces around the number and between number and unit are allowed, so the
// output of FormatSize for a whole unit parses back ("10 GiB").
// Returns EINVAL, naming the input, for an empty string, a negative number,
// a fraction ("1.5G": give "1536M"), an unknown unit or other garbage, and a
// value that does not fit in 64 bits. Zero is accepted; whether it is a valid
// size is the caller's rule.
Result<uint64_t> ParseSize(std::string_view text);

// Formats a byte count for people: "123 bytes", "1 byte", "512 MiB", "10 GiB",
// "1.5 GiB", "16 TiB". Uses the largest binary unit not exceeding the value;
// a non-whole value shows at most two decimals, truncated (never rounded up,
// so a size just below 1 GiB never reads as "1024 MiB").
std::string FormatSize(uint64_t bytes);

}  // namespace ebs
