// tandem tokenize: JSON lines on stdin -> JSON lines on stdout.
//   encode (default): {"text": "..."}  -> {"ids": [...]}   (no BOS/EOS added)
//   --decode:         {"ids": [...]}   -> {"text": "..."}
// A bad line gives {"error": "..."} and processing continues.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "tokenizer/tokenizer.h"

namespace tandem::cli {
namespace {

using nlohmann::json;

struct TokenizeOptions {
  std::string model;
  bool decode = false;
  bool skip_special_tokens = false;
  bool add_special_tokens = false;
  bool no_parse_special = false;
};

std::string ProcessLine(const Tokenizer& tok, const TokenizeOptions& opts, const std::string& line) {
  json in;
  try {
    in = json::parse(line);
  } catch (const json::exception& e) {
    return json{{"error", fmt::format("invalid JSON: {}", e.what())}}.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  if (opts.decode) {
    if (!in.is_object() || !in.contains("ids") || !in["ids"].is_array()) {
      return json{{"error", "expected {\"ids\": [integers]}"}}.dump();
    }
    std::vector<int32_t> ids;
    for (const json& v : in["ids"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= tok.vocab_size()) {
        return json{{"error", fmt::format("ids must be integers in [0, {}), got {}", tok.vocab_size(), v.dump())}}.dump();
      }
      ids.push_back(v.get<int32_t>());
    }
    return json{{"text", tok.Decode(ids, opts.skip_special_tokens)}}.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  if (!in.is_object() || !in.contains("text") || !in["text"].is_string()) {
    return json{{"error", "expected {\"text\": string}"}}.dump();
  }
  EncodeOptions eo;
  eo.add_special_tokens = opts.add_special_tokens;
  eo.parse_special = !opts.no_parse_special;
  return json{{"ids", tok.Encode(in["text"].get<std::string>(), eo)}}.dump();
}

int RunTokenize(const TokenizeOptions& opts) {
  auto tok = LoadTokenizer(opts.model);
  if (!tok.ok()) {
    std::cerr << "tokenize: " << tok.status().ToString() << "\n";
    return 1;
  }
  std::ios::sync_with_stdio(false);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    std::cout << ProcessLine(**tok, opts, line) << '\n';
  }
  std::cout.flush();
  return 0;
}

}  // namespace

void AddTokenizeCommand(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand("tokenize", "Encode {\"text\"} / decode {\"ids\"} JSON lines from stdin");
  cmd->add_option("--model", opts->model, "Model or tokenizer directory (tokenizer.json)")->required();
  cmd->add_flag("--decode", opts->decode, "Read {\"ids\": [...]} and write {\"text\": ...}");
  cmd->add_flag("--skip-special-tokens", opts->skip_special_tokens, "Decode: drop special tokens");
  cmd->add_flag("--add-special-tokens", opts->add_special_tokens, "Encode: add BOS/EOS as configured");
  cmd->add_flag("--no-parse-special", opts->no_parse_special,
                "Encode: treat special-token strings in the text as plain text");
  cmd->callback([opts, exit_code] { *exit_code = RunTokenize(*opts); });
}

}  // namespace tandem::cli
