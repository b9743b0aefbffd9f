#include <cstring>
#include <random>
#include <vector>

#include <capnp/message.h>
#include <gtest/gtest.h>
#include <kj/exception.h>

#include "flexsp/core/wire/envelope.hpp"
#include "flexsp/core/wire/frame.hpp"

namespace {

using namespace flexsp;
using flexsp::wire::frame_decoder;
using flexsp::wire::frame_limits;

std::vector<std::byte> to_bytes(const kj::Array<capnp::word>& words) {
  std::vector<std::byte> out(words.size() * sizeof(capnp::word));
  std::memcpy(out.data(), words.begin(), out.size());
  return out;
}

std::vector<std::byte> sample_frame(std::uint64_t seq) {
  capnp::MallocMessageBuilder msg;
  auto a = wire::start_envelope(msg, 7).getBody().initActor();
  a.setTarget(3);
  a.setTypeId(seq);
  return to_bytes(wire::encode_frame(msg));
}

std::vector<std::byte> raw_table(std::initializer_list<std::uint32_t> words) {
  std::vector<std::byte> out(words.size() * 4);
  std::memcpy(out.data(), std::data(words), out.size());
  return out;
}

TEST(FrameDecoder, DecodesAFrameFedOneByteAtATime) {
  frame_decoder d;
  const auto bytes = sample_frame(42);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    EXPECT_FALSE(d.next().has_value());
    ASSERT_TRUE(d.feed(std::span{bytes}.subspan(i, 1)));
  }
  auto f = d.next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->size_bytes(), bytes.size());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f->words.begin()) % alignof(capnp::word), 0u);
  wire::inbound_message msg{std::move(*f), frame_limits{}};
  auto env = wire::open_envelope(msg);
  ASSERT_TRUE(env) << env.error().to_string();
  EXPECT_EQ(env->getRequestId(), 7u);
  EXPECT_EQ(env->getBody().getActor().getTypeId(), 42u);
}

TEST(FrameDecoder, SplitsOneChunkIntoSeveralFramesInOrder) {
  std::vector<std::byte> stream;
  for (std::uint64_t i = 0; i < 5; ++i) {
    auto b = sample_frame(i);
    stream.insert(stream.end(), b.begin(), b.end());
  }
  frame_decoder d;
  ASSERT_TRUE(d.feed(stream));
  for (std::uint64_t i = 0; i < 5; ++i) {
    auto f = d.next();
    ASSERT_TRUE(f.has_value()) << i;
    wire::inbound_message msg{std::move(*f), frame_limits{}};
    auto env = wire::open_envelope(msg);
    ASSERT_TRUE(env);
    EXPECT_EQ(env->getBody().getActor().getTypeId(), i);
  }
  EXPECT_FALSE(d.next().has_value());
  EXPECT_EQ(d.partial_bytes(), 0u);
}

TEST(FrameDecoder, KeepsATruncatedFramePendingWithoutOutput) {
  frame_decoder d;
  const auto bytes = sample_frame(1);
  ASSERT_TRUE(d.feed(std::span{bytes}.first(bytes.size() - 3)));
  EXPECT_FALSE(d.next().has_value());
  EXPECT_EQ(d.partial_bytes(), bytes.size() - 3);
}

TEST(FrameDecoder, RejectsAnOversizedFrameFromItsTableAlone) {
  frame_limits limits;
  limits.max_frame_bytes = 1 << 20;
  frame_decoder d{limits};
  // One segment of 2^31 words: only the 8-byte table is ever sent.
  auto r = d.feed(raw_table({0, 0x80000000u}));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::protocol);
  EXPECT_NE(r.error().message().find("exceeds the limit"), std::string::npos) << r.error().to_string();
  EXPECT_TRUE(d.failed());
  EXPECT_FALSE(d.feed(sample_frame(1))) << "a failed stream stays failed";
}

TEST(FrameDecoder, RejectsTooManySegments) {
  frame_limits limits;
  limits.max_segments = 4;
  frame_decoder d{limits};
  auto r = d.feed(raw_table({9, 1}));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("10 segments"), std::string::npos) << r.error().to_string();
}

TEST(FrameDecoder, RejectsAnEmptyFirstSegment) {
  frame_decoder d;
  auto r = d.feed(raw_table({0, 0}));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::protocol);
}

TEST(FrameDecoder, SumsMultiSegmentTablesAgainstTheLimit) {
  frame_limits limits;
  limits.max_frame_bytes = 1024;
  frame_decoder d{limits};
  // Three segments of 60 words each: 8 + 8 + 3 * 480 bytes > 1024.
  auto r = d.feed(raw_table({2, 60, 60, 60}));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("exceeds"), std::string::npos);
}

TEST(OpenEnvelope, RejectsAMessageOfAnotherSchema) {
  capnp::MallocMessageBuilder msg;
  auto other = msg.initRoot<wire::schema::ActorMessage>();
  other.setTarget(0x0123456789abcdefull);  // fills the magic slot
  other.setErrorMessage("and more");
  frame_decoder d;
  ASSERT_TRUE(d.feed(to_bytes(wire::encode_frame(msg))));
  auto f = d.next();
  ASSERT_TRUE(f);
  wire::inbound_message in{std::move(*f), frame_limits{}};
  auto env = wire::open_envelope(in);
  ASSERT_FALSE(env);
  EXPECT_EQ(env.error().kind(), errc::protocol);
  EXPECT_NE(env.error().message().find("magic"), std::string::npos) << env.error().to_string();
}

TEST(OpenEnvelope, RejectsAnUnknownBodyTagAndAnotherVersion) {
  for (int variant = 0; variant < 2; ++variant) {
    capnp::MallocMessageBuilder msg;
    auto env = wire::start_envelope(msg);
    env.getBody().initActor();
    auto bytes = to_bytes(wire::encode_frame(msg));
    // Envelope data section: magic (4) version (2) discriminant (2) requestId (8), after the
    // 8-byte table and the 8-byte root pointer.
    if (variant == 0) {
      const std::uint16_t tag = 999;
      std::memcpy(bytes.data() + 16 + 6, &tag, 2);
    } else {
      const std::uint16_t version = 77;
      std::memcpy(bytes.data() + 16 + 4, &version, 2);
    }
    frame_decoder d;
    ASSERT_TRUE(d.feed(bytes));
    auto f = d.next();
    ASSERT_TRUE(f);
    wire::inbound_message in{std::move(*f), frame_limits{}};
    auto opened = wire::open_envelope(in);
    ASSERT_FALSE(opened) << variant;
    EXPECT_NE(opened.error().message().find(variant == 0 ? "tag 999" : "version 77"), std::string::npos)
        << opened.error().to_string();
  }
}

TEST(FrameDecoder, SurvivesRandomBytesAndMutatedFrames) {
  std::mt19937_64 rng{12345};
  frame_limits limits;
  limits.max_frame_bytes = 1 << 16;
  limits.traversal_limit_words = 1 << 12;
  const auto good = sample_frame(9);
  int decoded = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<std::byte> input;
    if (iter % 2 == 0) {
      input.resize(rng() % 256);
      for (auto& b : input) b = static_cast<std::byte>(rng());
    } else {
      input = good;
      for (int k = 0; k < 3; ++k) input[rng() % input.size()] = static_cast<std::byte>(rng());
    }
    frame_decoder d{limits};
    if (!d.feed(input)) {
      ++rejected;
      continue;
    }
    while (auto f = d.next()) {
      try {
        wire::inbound_message in{std::move(*f), limits};
        auto env = wire::open_envelope(in);
        if (!env) {
          ++rejected;
          continue;
        }
        (void)in.reader().getRoot<wire::schema::Envelope>().totalSize();
        ++decoded;
      } catch (const kj::Exception&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(decoded, 0) << "some single-byte mutations leave a valid envelope";
}

TEST(FrameLimits, ValidateNamesTheBadField) {
  frame_limits limits;
  limits.max_segments = 0;
  auto r = limits.validate();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("max_segments"), std::string::npos);
}

}  // namespace
