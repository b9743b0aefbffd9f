#pragma once
/// \file
/// A reference-counted pointer whose count lives in the object (one atomic, no control block).
/// Used for actor control blocks and request states, which are shared between threads and
/// copied on every send.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>

namespace flexsp::core::detail {

/// Base for objects owned through `intrusive_ptr`. The count starts at zero; the object is
/// deleted (through its virtual destructor) when the last reference goes away.
class ref_counted {
public:
  ref_counted() = default;
  ref_counted(const ref_counted&) = delete;
  ref_counted& operator=(const ref_counted&) = delete;
  virtual ~ref_counted() = default;

  void add_ref() const noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() const noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  std::uint32_t use_count() const noexcept { return refs_.load(std::memory_order_relaxed); }

private:
  mutable std::atomic<std::uint32_t> refs_{0};
};

/// Owning pointer to a `ref_counted` object. Copy = one relaxed atomic increment.
template <class T>
class intrusive_ptr {
public:
  intrusive_ptr() noexcept = default;
  intrusive_ptr(std::nullptr_t) noexcept {}
  /// Takes a new reference to `p` (unless `add_ref` is false: then adopts one already held).
  explicit intrusive_ptr(T* p, bool add_ref = true) noexcept : p_{p} {
    if (p_ && add_ref) p_->add_ref();
  }
  intrusive_ptr(const intrusive_ptr& o) noexcept : intrusive_ptr{o.p_} {}
  intrusive_ptr(intrusive_ptr&& o) noexcept : p_{std::exchange(o.p_, nullptr)} {}
  template <class U>
    requires std::is_convertible_v<U*, T*>
  intrusive_ptr(const intrusive_ptr<U>& o) noexcept : intrusive_ptr{o.get()} {}
  template <class U>
    requires std::is_convertible_v<U*, T*>
  intrusive_ptr(intrusive_ptr<U>&& o) noexcept : p_{o.detach()} {}
  ~intrusive_ptr() {
    if (p_) p_->release();
  }
  intrusive_ptr& operator=(intrusive_ptr o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }

  T* get() const noexcept { return p_; }
  T* operator->() const noexcept { return p_; }
  T& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  /// Gives up ownership without releasing; the caller now holds the reference.
  T* detach() noexcept { return std::exchange(p_, nullptr); }
  void reset() noexcept { intrusive_ptr{}.swap(*this); }
  void swap(intrusive_ptr& o) noexcept { std::swap(p_, o.p_); }

  friend bool operator==(const intrusive_ptr& a, const intrusive_ptr& b) noexcept { return a.p_ == b.p_; }
  friend bool operator==(const intrusive_ptr& a, std::nullptr_t) noexcept { return a.p_ == nullptr; }

private:
  T* p_ = nullptr;
};

template <class T, class... Args>
intrusive_ptr<T> make_intrusive(Args&&... args) {
  return intrusive_ptr<T>{new T(std::forward<Args>(args)...)};
}

}  // namespace flexsp::core::detail
