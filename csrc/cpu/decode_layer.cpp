// decode_layer.cpp - one decoder layer's decode step on the CPU, the model's own torch ops called from C++.
//
// Why it exists. With the int4 products, the norms and the attention in compiled kernels, what was left of a CPU
// decode step of the mid-size model (hidden 1024, 8 layers) was the Python between them: about 40 torch calls
// per layer (views, casts, the router's softmax and top-k, SiLU, the weighted sum of the experts) and the module
// calls around them, each slower inside a real step than in a warm loop, because every int4 product streams
// megabytes of weights through the caches. Here the same calls run in one C++ function: a mid-size token took
// 10-15% less time (interleaved A/B, docs/kernels-cpu.md).
//
// It is a second implementation of the reference's decode step, kept a faithful one: every step below is the torch
// op, or the minimoe op, that the PyTorch code in minimoe/model.py calls at that point (DecoderLayer -> RMSNorm ->
// Attention -> SparseMoeBlock / MLP), with the same arguments in the same order, so the result is the same bit for
// bit; tests/test_decode_layer.py checks exactly that. Because it is a copy, the native engine runs it only while
// the mirrored Python is unchanged (fingerprints, minimoe/engines/mirror.py), and only where it applies
// (NativeDecoderLayer._decode_weights): a single-token step
// through a KVCache, on the CPU, every linear layer of the layer without a bias and either all AWQ int4 or all
// plain weights in the activations' dtype; anywhere else the Python runs.
#include <torch/extension.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../check_text.h"

namespace minimoe {
namespace cpu {
namespace {

// The minimoe ops this one calls, found in the dispatcher once (each validates its own arguments).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("minimoe::rms_norm", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, weight, eps);
}

// The linear layers of one part of a layer (attention: q, k, v, o; ffn: w1, w3, w2 of each expert, or gate, up,
// down) as the op receives them: AWQ, (qweight, qzeros, scales) per layer with one group size each, or plain,
// one weight [N, K] per layer in the activations' dtype (an fp32/fp16/bf16 checkpoint).
struct Linears {
  at::TensorList tensors;
  at::IntArrayRef groups;  // AWQ only
  bool awq;

  int64_t inputs(int64_t i) const { return awq ? tensors[3 * i].size(0) : tensors[i].size(1); }
  int64_t outputs(int64_t i) const { return awq ? tensors[3 * i + 2].size(1) : tensors[i].size(0); }
  bool two_dimensional(int64_t i) const {
    return awq ? tensors[3 * i].dim() == 2 && tensors[3 * i + 2].dim() == 2 : tensors[i].dim() == 2;
  }
  std::string shapes(int64_t i) const {
    return awq ? "qweight " + as_text(tensors[3 * i].sizes()) + " and scales " + as_text(tensors[3 * i + 2].sizes())
               : "weight " + as_text(tensors[i].sizes());
  }

  // [layer(x) for x, layer in zip(xs, chosen layers)], the calls linear_many makes: the AWQ layers together in one
  // awq_gemm_many, a plain layer through F.linear.
  std::vector<at::Tensor> apply(const std::vector<at::Tensor>& xs, const std::vector<int64_t>& layers) const {
    std::vector<at::Tensor> ys;
    if (!awq) {
      for (size_t i = 0; i < xs.size(); ++i) ys.push_back(at::linear(xs[i], tensors[layers[i]]));
      return ys;
    }
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("minimoe::awq_gemm_many", "")
                         .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList, at::TensorList,
                                                        at::TensorList, at::IntArrayRef)>();
    std::vector<at::Tensor> qweights, qzeros, scales;
    std::vector<int64_t> group_sizes;
    for (const int64_t i : layers) {
      qweights.push_back(tensors[3 * i]);
      qzeros.push_back(tensors[3 * i + 1]);
      scales.push_back(tensors[3 * i + 2]);
      group_sizes.push_back(groups[i]);
    }
    return op.call(xs, qweights, qzeros, scales, group_sizes);
  }
};

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                            const at::Tensor& sin, const at::Tensor& key_cache, const at::Tensor& value_cache,
                            int64_t slot, const at::Tensor& mask, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("minimoe::decode_attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, at::Tensor, at::Tensor, int64_t, const at::Tensor&,
                                         double)>();
  return op.call(q, k, v, cos, sin, key_cache, value_cache, slot, mask, scale);
}

// SparseMoeBlock.forward (and Router.forward, run_experts) for the layer's B*T tokens [N, C].
// ffn: per expert e, w1, w3, w2 (layers 3e, 3e + 1, 3e + 2). Returns (out, logits, experts, weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe(const at::Tensor& tokens, const at::Tensor& router,
                                                               const Linears& ffn, int64_t top_k) {
  const int64_t E = router.size(0);
  // Router.forward
  const at::Tensor logits = at::linear(tokens.to(at::kFloat), router.to(at::kFloat)).to(tokens.scalar_type());
  const at::Tensor probs = at::softmax(logits, -1, at::kFloat);
  auto [top, experts] = at::topk(probs, top_k, -1);
  const at::Tensor weights = top / top.sum(-1, /*keepdim=*/true);
  // run_experts(chosen, inputs): every w1 and w3 in one linear_many, SiLU(gate) * up, every w2 in another.
  const auto run_experts = [&](const std::vector<int64_t>& chosen, const std::vector<at::Tensor>& inputs) {
    std::vector<at::Tensor> xs, hidden;
    std::vector<int64_t> w13, w2;
    for (size_t i = 0; i < chosen.size(); ++i) {
      xs.insert(xs.end(), {inputs[i], inputs[i]});
      w13.insert(w13.end(), {3 * chosen[i], 3 * chosen[i] + 1});
      w2.push_back(3 * chosen[i] + 2);
    }
    auto gates_and_ups = ffn.apply(xs, w13);
    for (size_t i = 0; i < chosen.size(); ++i)
      hidden.push_back(at::silu_(gates_and_ups[2 * i]).mul_(gates_and_ups[2 * i + 1]));
    return ffn.apply(hidden, w2);
  };
  at::Tensor out;
  if (top_k == E) {  // every token uses every expert: dense weights, no gather/scatter
    const at::Tensor dense = at::zeros_like(weights).scatter(1, experts, weights).to(tokens.scalar_type());
    std::vector<int64_t> all;
    for (int64_t e = 0; e < E; ++e) all.push_back(e);
    const auto ys = run_experts(all, std::vector<at::Tensor>(E, tokens));
    out = ys[0] * dense.slice(1, 0, 1);
    for (int64_t e = 1; e < E; ++e) out += ys[e] * dense.slice(1, e, e + 1);
  } else {
    const at::Tensor weights_dt = weights.to(tokens.scalar_type());
    out = at::zeros_like(tokens);
    std::vector<int64_t> chosen;
    std::vector<at::Tensor> inputs, token_indices, slots;
    for (int64_t e = 0; e < E; ++e) {
      const auto where = at::where(experts == e);
      if (where[0].numel() == 0) continue;
      chosen.push_back(e);
      token_indices.push_back(where[0]);
      slots.push_back(where[1]);
      inputs.push_back(tokens.index({where[0]}));
    }
    const auto ys = run_experts(chosen, inputs);
    for (size_t i = 0; i < chosen.size(); ++i)
      out.index_add_(0, token_indices[i], ys[i] * weights_dt.index({token_indices[i], slots[i]}).unsqueeze(-1));
  }
  return {out, logits, experts, weights};
}

using MaybeTensor = std::optional<at::Tensor>;
using LayerOutput = std::tuple<at::Tensor, MaybeTensor, MaybeTensor, MaybeTensor>;  // out, logits, experts, weights

LayerOutput decode_layer_cpu(
    const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask, at::Tensor key_cache,
    at::Tensor value_cache, int64_t slot, at::TensorList norms, at::TensorList attention_tensors,
    at::IntArrayRef attention_groups, const std::optional<at::Tensor>& router, at::TensorList ffn_tensors,
    at::IntArrayRef ffn_groups, bool awq, int64_t heads, int64_t kv_heads, int64_t top_k, double scale, double eps) {
  const char* op = "minimoe::decode_layer (CPU)";
  const Linears attention{attention_tensors, attention_groups, awq}, ffn{ffn_tensors, ffn_groups, awq};
  const int64_t per_layer = awq ? 3 : 1;  // tensors per linear layer
  const char* format = awq ? "(qweight, qzeros, scales) with a group size" : "one weight and no group size";
  // Every shape this op relies on, before any work; the ops it calls check the rest (dtypes, devices, qzeros).
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, found one on ", x.device());
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1 && x.size(0) > 0 && x.size(2) > 0, op,
              ": x must be [B, 1, C] (one new token per row), found shape ", as_text(x.sizes()));
  const int64_t B = x.size(0), C = x.size(2);
  TORCH_CHECK(norms.size() == 2, op, ": norms must be the 2 RMSNorm weights, found ", as_text(norms.size()));
  TORCH_CHECK(static_cast<int64_t>(attention_tensors.size()) == 4 * per_layer &&
                  static_cast<int64_t>(attention_groups.size()) == (awq ? 4 : 0),
              op, ": attention must be q, k, v, o, each ", format, " (", as_text(4 * per_layer), " tensors, ",
              as_text(awq ? 4 : 0), " group sizes), found ", as_text(attention_tensors.size()), " tensors and ",
              as_text(attention_groups.size()), " group sizes");
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, op,
              ": heads must be a positive multiple of kv_heads, found ", as_text(heads), " and ", as_text(kv_heads));
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.size(0) == B && key_cache.size(1) == kv_heads, op,
              ": key_cache must be [B, Hkv, slots, D] = [", as_text(B), ", ", as_text(kv_heads),
              ", slots, D], found shape ", as_text(key_cache.sizes()));
  const int64_t D = key_cache.size(3);
  TORCH_CHECK(cos.dim() == 3 && cos.size(0) == B && cos.size(1) == 1 && sin.dim() == 3 && sin.size(0) == B &&
                  sin.size(1) == 1,
              op, ": cos and sin must be [B, 1, D] = [", as_text(B), ", 1, D], found shapes ", as_text(cos.sizes()),
              " and ", as_text(sin.sizes()));
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == B && mask.size(1) == 1, op, ": mask must be [B, 1, slots seen] = [",
              as_text(B), ", 1, slots seen], found shape ", as_text(mask.sizes()));
  // Layer i of `linears` must map k inputs to n outputs (the products check the rest: dtypes, devices, qzeros).
  const auto check_linear = [&](const std::string& name, const Linears& linears, int64_t i, int64_t k, int64_t n) {
    TORCH_CHECK(linears.two_dimensional(i) && linears.inputs(i) == k && linears.outputs(i) == n, op, ": ", name,
                " must map ", as_text(k), " inputs to ", as_text(n), " outputs, found ", linears.shapes(i));
  };
  check_linear("q_proj", attention, 0, C, heads * D);
  check_linear("k_proj", attention, 1, C, kv_heads * D);
  check_linear("v_proj", attention, 2, C, kv_heads * D);
  check_linear("o_proj", attention, 3, heads * D, C);
  int64_t E = 1;  // experts; a dense MLP has one set of gate, up, down
  if (router.has_value()) {
    TORCH_CHECK(router->dim() == 2 && router->size(0) > 0 && router->size(1) == C, op,
                ": the router weight must be [E, C] = [E, ", as_text(C), "], found shape ",
                as_text(router->sizes()));
    TORCH_CHECK(router->device().is_cpu() && router->is_floating_point(), op,
                ": the router weight must be a floating-point CPU tensor, found ", router->scalar_type(), " on ",
                router->device());
    E = router->size(0);
    TORCH_CHECK(top_k >= 1 && top_k <= E, op, ": top_k must be in 1..", as_text(E), ", found ", as_text(top_k));
  }
  TORCH_CHECK(static_cast<int64_t>(ffn_tensors.size()) == 3 * E * per_layer &&
                  static_cast<int64_t>(ffn_groups.size()) == (awq ? 3 * E : 0),
              op, ": ffn must be ", router.has_value() ? "w1, w3, w2 of each of the " + as_text(E) + " experts"
                                                       : std::string("gate, up, down (no router)"),
              ", each ", format, " (", as_text(3 * E * per_layer), " tensors, ", as_text(awq ? 3 * E : 0),
              " group sizes), found ", as_text(ffn_tensors.size()), " tensors and ", as_text(ffn_groups.size()),
              " group sizes");
  const int64_t I = ffn.two_dimensional(0) ? ffn.outputs(0) : -1;  // the intermediate size, of the first w1 / gate
  for (int64_t e = 0; e < E; ++e) {
    const std::string prefix = router.has_value() ? "expert " + as_text(e) + " " : std::string();
    check_linear(prefix + (router.has_value() ? "w1" : "gate_proj"), ffn, 3 * e, C, I);
    check_linear(prefix + (router.has_value() ? "w3" : "up_proj"), ffn, 3 * e + 1, C, I);
    check_linear(prefix + (router.has_value() ? "w2" : "down_proj"), ffn, 3 * e + 2, I, C);
  }

  // DecoderLayer.forward: h = x + attn(norm1(x))
  const at::Tensor n1 = rms_norm(x, norms[0], eps).reshape({-1, C});
  const auto qkv = attention.apply({n1, n1, n1}, {0, 1, 2});  // linear_many(x, (q, k, v)), on x as [B, C]
  const at::Tensor attended =
      decode_attention(qkv[0].view({B, heads, D}), qkv[1].view({B, kv_heads, D}), qkv[2].view({B, kv_heads, D}),
                       cos.select(1, 0), sin.select(1, 0), key_cache, value_cache, slot, mask.select(1, 0), scale);
  // o_proj(out.view(B, 1, H * D)): a plain layer gets the 3-D view, as in Python (AWQLinear flattens it anyway)
  const at::Tensor o = attention.apply({awq ? attended.view({B, heads * D}) : attended.view({B, 1, heads * D})},
                                       {3})[0];
  const at::Tensor h = x + o.view({B, 1, C});
  // out = h + ffn(norm2(h))
  const at::Tensor tokens = rms_norm(h, norms[1], eps).reshape({B, C});
  if (!router.has_value()) {  // MLP.forward: down(silu(gate) * up), down on the 3-D [B, 1, I] as in Python
    const auto gate_up = ffn.apply({tokens, tokens}, {0, 1});
    const at::Tensor hidden = at::silu(gate_up[0]) * gate_up[1];
    const at::Tensor down = ffn.apply({awq ? hidden : hidden.view({B, 1, I})}, {2})[0];
    return {h + down.view({B, 1, C}), std::nullopt, std::nullopt, std::nullopt};
  }
  auto [out, logits, experts, weights] = moe(tokens, *router, ffn, top_k);
  return {h + out.view({B, 1, C}), logits, experts, weights};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(minimoe, CPU, m) { m.impl("decode_layer", &cpu::decode_layer_cpu); }

}  // namespace minimoe
