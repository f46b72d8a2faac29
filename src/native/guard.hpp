// Every C++ exception of a shim becomes an error string (vgg_error), never
// an unwind into Rust.
#pragma once
#include <c10/util/Exception.h>

#include <exception>
#include <string>

inline thread_local std::string vgg_last_error;

template <typename F>
int vgg_guard(F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    vgg_last_error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    vgg_last_error = e.what();
  } catch (...) {
    vgg_last_error = "unknown C++ exception";
  }
  return -1;
}
