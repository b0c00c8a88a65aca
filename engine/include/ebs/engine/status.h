// Errors as values. A Status carries an errno-style code (so the NBD layer can
// map it to the wire without guessing) and a human message for the CLI.
// No exception crosses a library boundary; functions that can fail return
// [[nodiscard]] Status or Result<T>.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace ebs {

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  // `code` is a positive errno value (EINVAL, ENOSPC, ...).
  static Status Error(int code, std::string message) { return Status(code, std::move(message)); }
  static Status InvalidArgument(std::string message) { return Status(EINVAL, std::move(message)); }
  static Status NotFound(std::string message) { return Status(ENOENT, std::move(message)); }
  static Status AlreadyExists(std::string message) { return Status(EEXIST, std::move(message)); }
  static Status Busy(std::string message) { return Status(EBUSY, std::move(message)); }
  static Status IoError(std::string message) { return Status(EIO, std::move(message)); }
  // Turns a syscall's errno into a Status: the one place that does so.
  static Status FromErrno(int err, const std::string& context);

  bool ok() const { return code_ == 0; }
  int code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const { return ok() ? "OK" : message_; }

 private:
  Status(int code, std::string message) : code_(code), message_(std::move(message)) {}
  int code_ = 0;
  std::string message_;
};

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}   // NOLINT: must not be ok()
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace ebs

#define EBS_RETURN_IF_ERROR(expr)        \
  do {                                   \
    ::ebs::Status _st = (expr);          \
    if (!_st.ok()) return _st;           \
  } while (0)
