#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "flexsp/core/wire/hmac.hpp"

namespace {

using flexsp::wire::sha256;
using flexsp::wire::to_hex;

std::string sha_hex(const std::string& s) {
  sha256 h;
  h.update(s);
  return to_hex(h.finish());
}

std::span<const std::uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string hmac_hex(const std::string& key, const std::string& data) {
  const std::span<const std::uint8_t> parts[] = {bytes(data)};
  return to_hex(flexsp::wire::hmac_sha256(bytes(key), parts));
}

TEST(Sha256, MatchesTheFipsVectors) {
  EXPECT_EQ(sha_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, GivesTheSameDigestWhateverTheChunking) {
  const std::string million(1000000, 'a');
  sha256 h;
  for (std::size_t i = 0; i < million.size(); i += 997) h.update(std::string_view{million}.substr(i, 997));
  EXPECT_EQ(to_hex(h.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(HmacSha256, MatchesRfc4231) {
  EXPECT_EQ(hmac_hex(std::string(20, '\x0b'), "Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hmac_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hmac_hex(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(HmacSha256, ConcatenatesItsParts) {
  const std::string a = "what do ya ", b = "want for nothing?";
  const std::span<const std::uint8_t> parts[] = {bytes(a), bytes(b)};
  EXPECT_EQ(to_hex(flexsp::wire::hmac_sha256(bytes("Jefe"), parts)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(ConstantTimeEqual, ComparesContentAndLength) {
  EXPECT_TRUE(flexsp::wire::constant_time_equal(bytes("abc"), bytes("abc")));
  EXPECT_FALSE(flexsp::wire::constant_time_equal(bytes("abc"), bytes("abd")));
  EXPECT_FALSE(flexsp::wire::constant_time_equal(bytes("abc"), bytes("ab")));
}

TEST(RandomBytes, FillsTheBufferWithDifferentNonces) {
  std::vector<std::uint8_t> a(32), b(32);
  ASSERT_TRUE(flexsp::wire::random_bytes(a));
  ASSERT_TRUE(flexsp::wire::random_bytes(b));
  EXPECT_NE(a, b);
}

}  // namespace
