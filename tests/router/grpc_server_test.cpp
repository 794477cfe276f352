// GrpcServer in process, with grpc++'s own client: binding (port 0, a taken port), a greedy
// golden through the stream, and the engine shutting down under open and new streams.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "router/grpc_server.h"
#include "support/engine_fixture.h"
#include "support/golden.h"
#include "tandem/v1/admin.grpc.pb.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem {
namespace {

constexpr char kModel[] = "tiny-llama31";

class GrpcServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = testing::MakeCpuEngine(kModel);
    ASSERT_NE(engine, nullptr);
    loop_ = std::make_unique<EngineLoop>(std::move(engine));
    executor_ = std::make_unique<LocalExecutor>(*loop_);
    GrpcServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.generation.poll_interval = std::chrono::milliseconds(10);
    auto server = GrpcServer::Start(options, *executor_, Model());
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    generation_ = v1::Generation::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
  }

  void TearDown() override {
    if (server_) server_->Shutdown(Clock::now());
    if (loop_) (void)loop_->Shutdown(Clock::now());
  }

  static ServedModel Model() {
    ServedModel model;
    model.id = kModel;
    model.vocab_size = 2048;
    model.max_model_len = 4096;
    return model;
  }

  static v1::GenerateRequest Greedy(const std::vector<int64_t>& prompt, int max_tokens) {
    v1::GenerateRequest req;
    for (int64_t id : prompt) req.add_prompt_token_ids(static_cast<int32_t>(id));
    req.mutable_sampling()->set_temperature(0.0f);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    req.mutable_sampling()->set_ignore_eos(true);
    return req;
  }

  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<LocalExecutor> executor_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> generation_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

TEST_F(GrpcServerTest, PortZeroBindsAFreePortAndATakenPortIsUnavailable) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));
  GrpcServerOptions options;
  options.listen_address = server_->address();
  auto second = GrpcServer::Start(options, *executor_, Model());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(server_->address()), std::string::npos);
}

TEST_F(GrpcServerTest, GreedyGoldenThroughTheStream) {
  testing::Goldens goldens(kModel);
  ASSERT_TRUE(goldens.ok());
  grpc::ClientContext context;
  auto reader = generation_->Generate(&context, Greedy(goldens.Int64("p3.input_ids").values, 16));
  v1::GenerateResponse msg;
  std::vector<int64_t> tokens;
  int completions = 0;
  while (reader->Read(&msg)) {
    for (int32_t id : msg.token_ids()) tokens.push_back(id);
    if (msg.has_completion()) {
      ++completions;
      EXPECT_EQ(msg.completion().finish_reason(), v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(msg.completion().usage().completion_tokens(), 16);
    }
    EXPECT_FALSE(msg.request_id().empty());
  }
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(completions, 1);
  EXPECT_EQ(tokens, goldens.Int64("p3.greedy_ids").values);

  grpc::ClientContext stats_context;
  v1::GetStatsResponse stats;
  ASSERT_TRUE(admin_->GetStats(&stats_context, v1::GetStatsRequest(), &stats).ok());
  EXPECT_GT(stats.num_steps(), 0);
  EXPECT_TRUE(stats.accepting());
}

TEST_F(GrpcServerTest, EngineShutdownEndsOpenStreamsAndRefusesNewOnesAsUnavailable) {
  grpc::ClientContext context;
  auto reader = generation_->Generate(&context, Greedy({5, 6, 7}, 3000));
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));  // it is running
  EXPECT_EQ(loop_->Shutdown(Clock::now()).code(), StatusCode::kDeadlineExceeded);
  for (int i = 0; i < 100000 && reader->Read(&msg); ++i) {
    EXPECT_FALSE(msg.has_completion());
  }
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("shut down"), std::string::npos) << status.error_message();

  grpc::ClientContext late_context;
  auto late = generation_->Generate(&late_context, Greedy({1}, 2));
  while (late->Read(&msg)) {
  }
  status = late->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("shutting down"), std::string::npos) << status.error_message();
}

}  // namespace
}  // namespace tandem
