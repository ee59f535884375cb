// Error hierarchy for dtrain. Every failure a user can cause or a peer can provoke surfaces as one
// of these, with a message naming the thing (flag, file, rank, tensor); nothing aborts the process.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dtrain {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A peer died, a connection broke, a file could not be read or written.
class IoError : public Error {
 public:
  using Error::Error;
};

// A wait passed its deadline. The message names the operation, tag and silent ranks.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

// Bad input from the caller: a flag, a URL, a size.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A peer sent something that does not fit the protocol (wrong size, wrong kind, mismatched call).
class ProtocolError : public Error {
 public:
  using Error::Error;
};

namespace detail {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename E, typename... Args>
[[noreturn]] void throw_at(const char* file, int line, const Args&... args) {
  throw E(concat(args..., " [", file, ":", line, "]"));
}

}  // namespace detail

// DT_THROW(IoError, "lost rank ", r) throws with file:line appended.
#define DT_THROW(Kind, ...) \
  ::dtrain::detail::throw_at<::dtrain::Kind>(__FILE__, __LINE__, __VA_ARGS__)

// DT_ENFORCE(n >= 0, "negative count ", n): precondition check raising InvalidArgument.
#define DT_ENFORCE(cond, ...)                                                                \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      ::dtrain::detail::throw_at<::dtrain::InvalidArgument>(__FILE__, __LINE__, __VA_ARGS__, \
                                                            " (check `" #cond "` failed)");  \
    }                                                                                        \
  } while (0)

// Same check, raising a given kind (e.g. ProtocolError for remote input).
#define DT_ENFORCE_AS(Kind, cond, ...)                                             \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      ::dtrain::detail::throw_at<::dtrain::Kind>(__FILE__, __LINE__, __VA_ARGS__); \
    }                                                                              \
  } while (0)

}  // namespace dtrain
