// tandem generate: runs prompts through the engine on this machine and prints the results.
//
//   tandem generate --model PATH --prompt-ids 1,2,3 --max-tokens N --temperature 0 --ignore-eos
//       --format json         -> one JSON object per prompt, on its own line
//   --prompt-ids-file FILE    -> JSON lines {"prompt_ids": [...]}, run as one continuous batch
//   --prompt TEXT / --chat MESSAGE [--system TEXT] -> through the model's tokenizer and template
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <fstream>
#include <iostream>
#include <map>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "tokenizer/incremental_decoder.h"

namespace tandem::cli {
namespace {

struct GenerateFlags {
  ModelFlags model;
  std::string prompt_ids;
  std::string prompt_ids_file;
  std::string prompt;
  std::string chat;
  std::string system;
  std::string format = "text";
  std::string log_level = "warn";
  SamplingParams sampling;
  int64_t seed = -1;
};

StatusOr<std::vector<TokenId>> ParseIdList(const std::string& text) {
  std::vector<TokenId> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      long long v = std::stoll(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      if (v < 0 || v > std::numeric_limits<TokenId>::max()) {
        return InvalidArgumentError("token id " + item + " is out of range");
      }
      ids.push_back(static_cast<TokenId>(v));
    } catch (const std::exception&) {
      return InvalidArgumentError("--prompt-ids: '" + item + "' is not an integer");
    }
  }
  return ids;
}

StatusOr<std::vector<std::vector<TokenId>>> ReadPromptFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read --prompt-ids-file " + path);
  std::vector<std::vector<TokenId>> prompts;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object() || !json.contains("prompt_ids") ||
        !json["prompt_ids"].is_array()) {
      return InvalidArgumentError(path + ":" + std::to_string(line_no) +
                                  ": expected {\"prompt_ids\": [int, ...]}");
    }
    std::vector<TokenId> ids;
    for (const auto& v : json["prompt_ids"]) {
      if (!v.is_number_integer()) {
        return InvalidArgumentError(path + ":" + std::to_string(line_no) + ": prompt_ids must be integers");
      }
      ids.push_back(v.get<TokenId>());
    }
    prompts.push_back(std::move(ids));
  }
  return prompts;
}

int Run(GenerateFlags& flags) {
  ConfigureLogging(flags.log_level);
  if (flags.format != "json" && flags.format != "text") {
    std::cerr << "error: --format must be json or text\n";
    return 2;
  }
  const int sources = !flags.prompt_ids.empty() + !flags.prompt_ids_file.empty() +
                      !flags.prompt.empty() + !flags.chat.empty();
  if (sources != 1) {
    std::cerr << "error: give exactly one of --prompt-ids, --prompt-ids-file, --prompt, --chat\n";
    return 2;
  }
  auto loaded = LoadModel(flags.model);
  if (!loaded.ok()) {
    std::cerr << "error: " << loaded.status().ToString() << "\n";
    return 1;
  }
  Engine& engine = *loaded->engine;
  const Tokenizer* tokenizer = loaded->tokenizer.get();

  std::vector<std::vector<TokenId>> prompts;
  if (!flags.prompt_ids.empty()) {
    auto ids = ParseIdList(flags.prompt_ids);
    if (!ids.ok()) {
      std::cerr << "error: " << ids.status().ToString() << "\n";
      return 2;
    }
    prompts.push_back(*ids);
  } else if (!flags.prompt_ids_file.empty()) {
    auto file = ReadPromptFile(flags.prompt_ids_file);
    if (!file.ok()) {
      std::cerr << "error: " << file.status().ToString() << "\n";
      return 2;
    }
    prompts = std::move(file).value();
  } else {
    if (tokenizer == nullptr) {
      std::cerr << "error: --prompt/--chat need a tokenizer; " << flags.model.model << " has none\n";
      return 2;
    }
    std::string text = flags.prompt;
    EncodeOptions encode;
    if (!flags.chat.empty()) {
      if (!loaded->chat_template) {
        std::cerr << "error: the model has no chat template; use --prompt\n";
        return 2;
      }
      nlohmann::json messages = nlohmann::json::array();
      if (!flags.system.empty()) messages.push_back({{"role", "system"}, {"content", flags.system}});
      messages.push_back({{"role", "user"}, {"content", flags.chat}});
      auto rendered = loaded->chat_template->Render(messages, true, nullptr, nlohmann::json::object(),
                                                    tokenizer->bos_token(), tokenizer->eos_token());
      if (!rendered.ok()) {
        std::cerr << "error: chat template: " << rendered.status().ToString() << "\n";
        return 2;
      }
      text = *rendered;
    } else {
      encode.add_special_tokens = true;  // plain prompts get the tokenizer's BOS, as HF does
    }
    prompts.push_back(tokenizer->Encode(text, encode));
  }
  if (flags.seed >= 0) flags.sampling.seed = static_cast<uint64_t>(flags.seed);

  std::vector<std::string> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.request_id = std::to_string(i);
    r.prompt_token_ids = prompts[i];
    r.sampling = flags.sampling;
    Status s = engine.AddRequest(std::move(r));
    if (!s.ok()) {
      std::cerr << "error: prompt " << i << ": " << s.ToString() << "\n";
      return 2;
    }
    ids.push_back(std::to_string(i));
  }

  const bool stream_text = flags.format == "text" && tokenizer != nullptr && prompts.size() == 1;
  std::optional<IncrementalDecoder> stream;
  if (stream_text) stream.emplace(*tokenizer, /*skip_special_tokens=*/true);
  std::map<std::string, std::vector<TokenOutput>> tokens;
  std::map<std::string, RequestOutput> finals;
  while (engine.HasUnfinished()) {
    auto outputs = engine.Step();
    if (!outputs.ok()) {
      std::cerr << "error: " << outputs.status().ToString() << "\n";
      return 1;
    }
    for (RequestOutput& out : *outputs) {
      for (const TokenOutput& t : out.new_tokens) {
        tokens[out.request_id].push_back(t);
        if (stream) std::cout << stream->Step(t.token) << std::flush;
      }
      if (out.finished) finals[out.request_id] = out;
    }
  }
  if (stream) std::cout << stream->Flush() << std::endl;

  for (const std::string& id : ids) {
    const RequestOutput& fin = finals[id];
    std::vector<TokenId> out_ids;
    for (const auto& t : tokens[id]) out_ids.push_back(t.token);
    if (fin.finish_reason == FinishReason::kError) {
      std::cerr << "error: request " << id << ": " << fin.status.ToString() << "\n";
      return 1;
    }
    if (flags.format == "json") {
      nlohmann::json j;
      j["index"] = std::stoi(id);
      j["token_ids"] = out_ids;
      j["finish_reason"] = std::string(FinishReasonName(fin.finish_reason));
      j["num_prompt_tokens"] = fin.num_prompt_tokens;
      j["num_cached_tokens"] = fin.num_cached_tokens;
      j["queue_ms"] = fin.queue_ms;
      j["ttft_ms"] = fin.ttft_ms;
      j["tpot_ms"] = fin.tpot_ms;
      if (tokenizer != nullptr) j["text"] = tokenizer->Decode(out_ids, /*skip_special_tokens=*/true);
      if (flags.sampling.logprobs >= 0) {
        nlohmann::json lps = nlohmann::json::array();
        for (const auto& t : tokens[id]) {
          nlohmann::json top = nlohmann::json::array();
          for (const auto& [tok, lp] : t.top_logprobs) top.push_back({{"token_id", tok}, {"logprob", lp}});
          lps.push_back({{"token_id", t.token}, {"logprob", t.logprob}, {"top", top}});
        }
        j["logprobs"] = lps;
      }
      std::cout << j.dump() << "\n";
    } else if (!stream_text) {
      if (tokenizer != nullptr) {
        std::cout << tokenizer->Decode(out_ids, true) << "\n";
      } else {
        for (size_t i = 0; i < out_ids.size(); ++i) std::cout << (i ? "," : "") << out_ids[i];
        std::cout << "\n";
      }
    }
  }
  return 0;
}

}  // namespace

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  auto* cmd = app.add_subcommand("generate", "Generate tokens for prompts on this machine");
  AddModelFlags(cmd, &flags->model);
  cmd->add_option("--prompt-ids", flags->prompt_ids, "Comma-separated prompt token ids");
  cmd->add_option("--prompt-ids-file", flags->prompt_ids_file,
                  "JSON lines {\"prompt_ids\": [...]}, run as one continuous batch");
  cmd->add_option("--prompt", flags->prompt, "Prompt text (tokenized with the model's tokenizer)");
  cmd->add_option("--chat", flags->chat, "A user message, rendered with the model's chat template");
  cmd->add_option("--system", flags->system, "System message for --chat");
  cmd->add_option("--format", flags->format, "text or json")->capture_default_str();
  cmd->add_option("--log-level", flags->log_level, "trace, debug, info, warn, error")->capture_default_str();
  SamplingParams& sp = flags->sampling;
  cmd->add_option("--max-tokens", sp.max_tokens, "Tokens to generate")->capture_default_str();
  cmd->add_option("--min-tokens", sp.min_tokens, "Ignore stop conditions before this many tokens");
  cmd->add_option("--temperature", sp.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", sp.top_k, "0 = off");
  cmd->add_option("--top-p", sp.top_p, "1 = off");
  cmd->add_option("--min-p", sp.min_p, "0 = off");
  cmd->add_option("--repetition-penalty", sp.repetition_penalty, "1 = off");
  cmd->add_option("--presence-penalty", sp.presence_penalty, "0 = off");
  cmd->add_option("--frequency-penalty", sp.frequency_penalty, "0 = off");
  cmd->add_option("--seed", flags->seed, "Per-request sampling seed (-1: engine-chosen)");
  cmd->add_flag("--ignore-eos", sp.ignore_eos, "Do not stop at EOS");
  cmd->add_option("--stop-token-ids", sp.stop_token_ids, "Extra ids that end generation")->delimiter(',');
  cmd->add_option("--logprobs", sp.logprobs, "Top-N logprobs per token (-1: none)");
  cmd->callback([flags, exit_code] { *exit_code = Run(*flags); });
}

}  // namespace tandem::cli
