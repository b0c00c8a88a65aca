// The libraries' one way to report what they notice but do not return as an
// error (a failed background load, a damaged tracking file rebuilt, house-
// keeping that will be retried): a process-wide sink that the program owns.
// `ebs serve` and the CLI keep the default, a line "ebs: MESSAGE" on stderr;
// a test or an embedding program may install its own. Thread-safe.
#pragma once

#include <functional>
#include <string_view>

namespace ebs {

enum class LogLevel { kInfo, kWarning, kError };

using LogSink = std::function<void(LogLevel level, std::string_view message)>;

// Replaces the sink; an empty one restores the default.
void SetLogSink(LogSink sink);
void Log(LogLevel level, std::string_view message);

inline void LogWarning(std::string_view message) { Log(LogLevel::kWarning, message); }
inline void LogError(std::string_view message) { Log(LogLevel::kError, message); }

}  // namespace ebs
