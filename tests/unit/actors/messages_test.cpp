// The message types generated from the schemas (capnpc-flexsp): defaults come from the schema,
// and every field survives a trip through its Cap'n Proto encoding.
#include <gtest/gtest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "flexsp/actors/device_actor.hpp"
#include "flexsp/actors/training_messages.hpp"

namespace flexsp::actors {
namespace {

template <class T>
T round_trip(const T& in) {
  capnp::MallocMessageBuilder builder;
  wire_codec<T>::encode(in, builder.initRoot<typename wire_codec<T>::schema>());
  auto words = capnp::messageToFlatArray(builder);
  capnp::FlatArrayMessageReader reader{words};
  return wire_codec<T>::decode(reader.getRoot<typename wire_codec<T>::schema>());
}

TEST(GeneratedMessages, DefaultsComeFromTheSchema) {
  const join_job j;
  EXPECT_EQ(j.model.layers, 2u);
  EXPECT_EQ(j.model.d_model, 64u);
  EXPECT_EQ(j.model.attention, attention_precision::fp32);
  EXPECT_FLOAT_EQ(j.optimizer.lr, 0.003f);
  EXPECT_FLOAT_EQ(j.optimizer.beta2, 0.95f);
  EXPECT_EQ(j.collective_timeout_ms, 10000u);
  EXPECT_EQ(j.collective_host, "127.0.0.1");
  EXPECT_EQ(j.collectives, collective_library::gloo);
  EXPECT_EQ(step_plan{}.sync_source, -1);
  EXPECT_EQ(job_update{}.state, job_state::running);
  // An empty message on the wire decodes to the same defaults.
  EXPECT_EQ(round_trip(join_job{}).collective_host, "127.0.0.1");
  EXPECT_EQ(round_trip(step_plan{}).sync_source, -1);
}

TEST(GeneratedMessages, NestedStructsEnumsAndScalarsRoundTrip) {
  join_job j;
  j.job_id = "demo-3";
  j.device = 7;
  j.model = {4, 128, 8, 50000, 4096, attention_precision::bf16, matmul_precision::tf32};
  j.seed = 1ull << 40;
  j.optimizer.lr = 0.5f;
  j.optimizer.max_grad_norm = 0;
  j.scheduler_host = "10.0.0.1:7400";
  j.scheduler_actor = 99;
  j.resume_from = "/ckpt/step-000010.ckpt";
  j.collectives = collective_library::nccl;
  j.tag = 12;
  const auto r = round_trip(j);
  EXPECT_EQ(r.job_id, j.job_id);
  EXPECT_EQ(r.device, 7u);
  EXPECT_EQ(r.model.vocab, 50000u);
  EXPECT_EQ(r.model.max_seq, 4096u);
  EXPECT_EQ(r.model.attention, attention_precision::bf16);
  EXPECT_EQ(r.model.matmul, matmul_precision::tf32);
  EXPECT_EQ(r.seed, j.seed);
  EXPECT_FLOAT_EQ(r.optimizer.lr, 0.5f);
  EXPECT_FLOAT_EQ(r.optimizer.max_grad_norm, 0.0f);
  EXPECT_EQ(r.scheduler_host, j.scheduler_host);
  EXPECT_EQ(r.resume_from, j.resume_from);
  EXPECT_EQ(r.collectives, collective_library::nccl);
  EXPECT_EQ(r.tag, 12u);
}

TEST(GeneratedMessages, ListsOfScalarsStructsAndTextRoundTrip) {
  step_plan p;
  p.job_id = "j";
  p.step = 5;
  p.attempt = 9;
  p.world = {0, 2, 5};
  p.sync_source = 2;
  p.micro_batches = {{{0, 5}, {3, 1}, {10, 11, 12, 13, 20, 21}, 4.5}, {{}, {}, {}, 0}};
  p.calibrate = true;
  const auto r = round_trip(p);
  EXPECT_EQ(r.world, p.world);
  EXPECT_EQ(r.sync_source, 2);
  ASSERT_EQ(r.micro_batches.size(), 2u);
  EXPECT_EQ(r.micro_batches[0].group, p.micro_batches[0].group);
  EXPECT_EQ(r.micro_batches[0].tokens, p.micro_batches[0].tokens);
  EXPECT_DOUBLE_EQ(r.micro_batches[0].predicted_ms, 4.5);
  EXPECT_TRUE(r.micro_batches[1].group.empty());
  EXPECT_TRUE(r.calibrate);

  job_list l;
  job_info i;
  i.id = "a-1";
  i.state = job_state::cancelled;
  i.metrics = {"{\"step\":0}", "{\"step\":1}"};
  i.logs = {"started"};
  l.jobs = {i, job_info{}};
  const auto rl = round_trip(l);
  ASSERT_EQ(rl.jobs.size(), 2u);
  EXPECT_EQ(rl.jobs[0].state, job_state::cancelled);
  EXPECT_EQ(rl.jobs[0].metrics, i.metrics);
  EXPECT_EQ(rl.jobs[0].logs, i.logs);
  EXPECT_TRUE(terminal(rl.jobs[0]));
  EXPECT_EQ(rl.jobs[1].state, job_state::pending);

  device_info d{"cuda:1", 4, "NVIDIA H200", {"x-1", "y-2"}};
  EXPECT_EQ(round_trip(d).jobs, d.jobs);
}

TEST(GeneratedMessages, EnumsHaveNamesBothWays) {
  EXPECT_EQ(to_string(collective_library::nccl), "nccl");
  collective_library c{};
  EXPECT_TRUE(parse_collective_library("gloo", c));
  EXPECT_EQ(c, collective_library::gloo);
  EXPECT_FALSE(parse_collective_library("mpi", c));
  job_state s{};
  EXPECT_TRUE(parse_job_state("succeeded", s));
  EXPECT_TRUE(is_terminal(s));
  EXPECT_FALSE(is_terminal(job_state::running));
}

}  // namespace
}  // namespace flexsp::actors
