#include "flexsp/core/check.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace flexsp {
namespace {

int checked_divide(int a, int b) {
  FLEXSP_EXPECTS(b != 0, "divisor b={} for a={}", b, a);
  return a / b;
}

expected<int> open_readonly(const char* path) {
  int fd = -1;
  FLEXSP_SYSCALL(fd = ::open(path, O_RDONLY));
  return fd;
}

struct fake_status {
  int code;
};
expected<void> call_fake_library(int code) {
  FLEXSP_CHECK_C("fakelib", rc, fake_status{code}, rc.code == 0, rc.code, "fake failure");
  return {};
}

TEST(Expects, ThrowsAPreconditionErrorNamingTheValues) {
  EXPECT_EQ(checked_divide(6, 3), 2);
  try {
    checked_divide(6, 0);
    FAIL() << "no throw";
  } catch (const precondition_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("b != 0"), std::string::npos) << what;
    EXPECT_NE(what.find("divisor b=0 for a=6"), std::string::npos) << what;
  }
}

TEST(AssertDeathTest, AbortsWithTheExpressionAndValues) {
  const int workers = 3;
  EXPECT_DEATH(FLEXSP_ASSERT(workers == 4, "workers={}", workers), "workers == 4.*workers=3");
}

TEST(Syscall, TurnsErrnoIntoAnErrorWithTheCallText) {
  auto r = open_readonly("/nonexistent/flexsp/file");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::not_found);
  EXPECT_NE(r.error().message().find("::open(path, O_RDONLY)"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("check_test.cpp"), std::string::npos);

  auto ok = open_readonly("/dev/null");
  ASSERT_TRUE(ok);
  ::close(*ok);
}

TEST(CheckC, ReportsTheLibraryCodeAndDescription) {
  EXPECT_TRUE(call_fake_library(0));
  auto r = call_fake_library(42);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("fakelib call failed"), std::string::npos);
  EXPECT_NE(r.error().message().find("-> 42 (fake failure)"), std::string::npos) << r.error().message();
}

TEST(ErrnoKind, MapsConnectionErrorsToDisconnected) {
  EXPECT_EQ(detail::errno_kind(ECONNRESET), errc::disconnected);
  EXPECT_EQ(detail::errno_kind(ETIMEDOUT), errc::timeout);
  EXPECT_EQ(detail::errno_kind(EIO), errc::io);
}

}  // namespace
}  // namespace flexsp
