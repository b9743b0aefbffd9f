// The head's state store: every kind keeps the same model; the file kind survives reopening,
// a torn last record and compaction; the Redis kind runs against a redis-server of its own.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "flexsp/actors/state_store.hpp"
#include "../../support/redis_server.hpp"

namespace {

using namespace flexsp::actors;
namespace fs = std::filesystem;

struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("flexsp-state-test-" + std::to_string(::getpid()) + "-" +
                                                std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  temp_dir() { fs::create_directories(path); }
  ~temp_dir() { fs::remove_all(path); }
};

/// The behaviour every kind shares.
void exercise(state_store& s) {
  ASSERT_TRUE(s.put("nodes", "1", "alpha"));
  ASSERT_TRUE(s.put("nodes", "2", std::string{"be\0ta", 5}));
  ASSERT_TRUE(s.put("nodes", "1", "gamma"));  // replaces
  ASSERT_TRUE(s.put("kv", "k", "v"));
  ASSERT_TRUE(s.erase("kv", "k"));
  ASSERT_TRUE(s.erase("kv", "never-there"));
  ASSERT_TRUE(s.append("metrics/a", "m0"));
  ASSERT_TRUE(s.append("metrics/a", "m1"));
  ASSERT_TRUE(s.append("metrics/b", "x"));
  ASSERT_TRUE(s.drop("metrics/b"));
  ASSERT_TRUE(s.put("names", "n", "1"));
  ASSERT_TRUE(s.clear("names"));

  auto nodes = s.entries("nodes");
  ASSERT_TRUE(nodes);
  EXPECT_EQ(nodes->size(), 2u);
  EXPECT_EQ(nodes->at("1"), "gamma");
  EXPECT_EQ(nodes->at("2"), std::string("be\0ta", 5));
  EXPECT_TRUE(s.entries("kv")->empty());
  EXPECT_TRUE(s.entries("names")->empty());
  EXPECT_TRUE(s.entries("no-such-table")->empty());
  EXPECT_EQ(*s.items("metrics/a"), (std::vector<std::string>{"m0", "m1"}));
  EXPECT_TRUE(s.items("metrics/b")->empty());
}

TEST(StateStore, MemoryKeepsTablesAndLists) {
  auto s = open_state_store("memory:");
  ASSERT_TRUE(s) << s.error().to_string();
  exercise(**s);
}

TEST(StateStore, FileStateSurvivesReopening) {
  temp_dir d;
  const auto path = (d.path / "head.state").string();
  {
    auto s = open_state_store("file:" + path);
    ASSERT_TRUE(s) << s.error().to_string();
    exercise(**s);
  }
  auto again = open_state_store(path);
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ((*again)->entries("nodes")->at("1"), "gamma");
  EXPECT_EQ(*(*again)->items("metrics/a"), (std::vector<std::string>{"m0", "m1"}));
  EXPECT_TRUE((*again)->entries("kv")->empty());
}

TEST(StateStore, FileDropsARecordCutShortByACrash) {
  temp_dir d;
  const auto path = (d.path / "head.state").string();
  {
    auto s = open_state_store(path);
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->put("jobs", "a", "committed"));
    ASSERT_TRUE((*s)->put("jobs", "b", "also committed"));
  }
  const auto full = fs::file_size(path);
  // The process died in the middle of writing a third record: its first bytes are there.
  {
    std::ofstream f{path, std::ios::binary | std::ios::app};
    f.write("P\x04\x00\x00\x00jo", 7);
  }
  {
    auto s = open_state_store(path);
    ASSERT_TRUE(s) << s.error().to_string();
    auto jobs = (*s)->entries("jobs");
    EXPECT_EQ(jobs->size(), 2u);
    EXPECT_EQ(fs::file_size(path), full);  // the torn bytes are gone
    ASSERT_TRUE((*s)->put("jobs", "c", "after the crash"));
  }
  auto s = open_state_store(path);
  ASSERT_TRUE(s);
  EXPECT_EQ((*s)->entries("jobs")->size(), 3u);
}

TEST(StateStore, FileWithAFlippedByteKeepsTheRecordsBeforeIt) {
  temp_dir d;
  const auto path = (d.path / "head.state").string();
  {
    auto s = open_state_store(path);
    ASSERT_TRUE((*s)->put("t", "first", "1"));
    ASSERT_TRUE((*s)->put("t", "second", "2"));
  }
  {
    std::fstream f{path, std::ios::binary | std::ios::in | std::ios::out};
    f.seekp(-6, std::ios::end);  // inside the second record's value or hash
    f.put('\x7f');
  }
  auto s = open_state_store(path);
  ASSERT_TRUE(s);
  auto t = (*s)->entries("t");
  EXPECT_EQ(t->size(), 1u);
  EXPECT_EQ(t->count("first"), 1u);
}

TEST(StateStore, FileIsCompactedWhenDeadRecordsDominate) {
  temp_dir d;
  const auto path = (d.path / "head.state").string();
  auto s = open_state_store(path);
  ASSERT_TRUE(s);
  const std::string value(1000, 'x');
  for (int i = 0; i < 5000; ++i) ASSERT_TRUE((*s)->put("progress", "job", value + std::to_string(i)));
  // 5 MB written, one live entry: the file stays small.
  EXPECT_LT(fs::file_size(path), 2u << 20);
  s->reset();
  auto again = open_state_store(path);
  ASSERT_TRUE(again);
  EXPECT_EQ((*again)->entries("progress")->at("job"), value + "4999");
}

TEST(StateStore, ForeignFilesAndUnknownUrlsAreRefused) {
  temp_dir d;
  const auto path = (d.path / "not-state.txt").string();
  std::ofstream{path} << "hello\n";
  auto s = open_state_store(path);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("not a flexsp state file"), std::string::npos);
  EXPECT_FALSE(open_state_store("etcd://somewhere:2379"));
  EXPECT_FALSE(open_state_store("redis://127.0.0.1:notaport"));
  EXPECT_EQ(open_state_store((d.path / "no-dir" / "x" / "head.state").string()).has_value(), true);  // made
}

TEST(StateStore, RedisUnreachableIsAClearError) {
  const int port = flexsp::testing::free_loopback_port();  // nothing listens there
  auto s = open_state_store("redis://127.0.0.1:" + std::to_string(port));
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("cannot reach redis"), std::string::npos) << s.error().message();
}

TEST(StateStore, RedisKeepsTablesAndListsAcrossConnections) {
  temp_dir d;
  flexsp::testing::redis_server r;
  if (!r.start(d.path)) GTEST_SKIP() << "redis-server is not installed or did not start (scripts/bootstrap.sh installs it)";
  const auto url = r.url("test-ns");
  {
    auto s = open_state_store(url);
    ASSERT_TRUE(s) << s.error().to_string();
    exercise(**s);
  }
  auto again = open_state_store(url);
  ASSERT_TRUE(again);
  EXPECT_EQ((*again)->entries("nodes")->at("1"), "gamma");
  EXPECT_EQ(*(*again)->items("metrics/a"), (std::vector<std::string>{"m0", "m1"}));
  // Another namespace sees nothing of it.
  auto other = open_state_store(r.url("other"));
  ASSERT_TRUE(other);
  EXPECT_TRUE((*other)->entries("nodes")->empty());
}

}  // namespace
