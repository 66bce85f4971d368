"""The LLM wrapper (sec. 3.2): input sequence layout, KV-cached scene prefix, eq. 5 loss, greedy generation."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import make_batch, tiny_tokenizer

from sparseoccvla_core.batch import IGNORE_INDEX
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.llm import SceneLanguageModel, build_causal_lm, cache_keyword
from sparseoccvla_core.model import SparseOccVLA
from sparseoccvla_core.tokenizer import encode_qa


@pytest.fixture(scope="module")
def cfg() -> SparseOccVLAConfig:
    return SparseOccVLAConfig.tiny()


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return tiny_tokenizer(cfg)


@pytest.fixture(scope="module")
def lm(cfg, tokenizer) -> SceneLanguageModel:
    torch.manual_seed(0)
    model = SceneLanguageModel(cfg, len(tokenizer), tokenizer).eval()
    # non-zero LoRA B so the adapters take part in every check below
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    return model


def _full_hidden(lm, embeds, mask=None):
    return lm.decoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state


def test_vocabulary_equals_tokenizer_and_lora_only_in_adapters(lm, tokenizer, cfg):
    assert lm.base_model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert lm.lm_head.out_features == len(tokenizer)
    lora_names = [n for n, _ in lm.model.named_parameters() if "lora_" in n]
    assert lora_names and all(any(t in n for t in cfg.lora_target_modules) for n in lora_names)
    assert lm.base_model.config.num_hidden_layers == cfg.llm_num_layers
    assert lm.hidden_size == cfg.llm_hidden_size


def test_llm_input_sequence_is_occupancy_global_ego_text(cfg, tokenizer):
    """The LLM sees N occupancy + G global + 1 ego tokens, then the text; the first N are the connector's output."""
    torch.manual_seed(0)
    model = SparseOccVLA(cfg, tokenizer=tokenizer)
    batch = make_batch(cfg, 2, seed=1, tokenizer=tokenizer)
    calls = []

    def record(module, args, kwargs):
        cache = kwargs[cache_keyword(module)]  # "cache" (current transformers) or "past_key_values"
        calls.append((kwargs["inputs_embeds"].detach().clone(), cache.get_seq_length()))

    handle = model.llm.decoder.register_forward_pre_hook(record, with_kwargs=True)
    model.set_stage(2)
    captured_encoder = {}
    enc_handle = model.occupancy_encoder.register_forward_hook(
        lambda m, a, out: captured_encoder.setdefault("out", out)
    )
    try:
        model(batch, stage=2)
    finally:
        handle.remove()
        enc_handle.remove()
    n, g = cfg.num_queries, cfg.num_global_queries
    prefix_embeds, prefix_past = calls[0]
    assert prefix_past == 0 and prefix_embeds.shape == (2, n + g + 1, cfg.llm_hidden_size)
    # the text streams (QA, then planning) continue after exactly that prefix
    (qa_embeds, qa_past), (plan_embeds, plan_past) = calls[1], calls[2]
    assert qa_past == plan_past == n + g + 1
    assert qa_embeds.shape[1] == batch.qa_input_ids.shape[1] and plan_embeds.shape[1] == batch.plan_input_ids.shape[1]
    total = prefix_embeds.shape[1] + qa_embeds.shape[1]
    assert total == n + g + 1 + batch.qa_input_ids.shape[1]
    # occupancy tokens == connector(Q_L, P_L), global / ego tokens follow
    enc = captured_encoder["out"]
    with torch.no_grad():
        t_o = model.connector(enc.queries, enc.query_points)
        t_g = model.global_queries(t_o)
        t_ego = model.ego_token(batch.ego_state, batch.command)
    assert torch.allclose(prefix_embeds[:, :n], t_o, atol=1e-6)
    assert torch.allclose(prefix_embeds[:, n : n + g], t_g, atol=1e-6)
    assert torch.allclose(prefix_embeds[:, n + g], t_ego[:, 0], atol=1e-6)
    assert torch.equal(qa_embeds, model.llm.embed(batch.qa_input_ids).detach())
    # the public helper gives the same full sequence
    with torch.no_grad():
        full = model.scene_inputs_embeds(batch, "qa")
    assert full.shape == (2, n + g + 1 + batch.qa_input_ids.shape[1], cfg.llm_hidden_size)
    assert torch.allclose(full[:, : n + g + 1], prefix_embeds, atol=1e-6)


def test_cached_prefix_equals_one_causal_pass(lm, cfg):
    """Prefix once + text through the KV cache == one causal pass over [prefix, text]; the cache is cropped back."""
    torch.manual_seed(1)
    prefix_embeds = torch.randn(2, 9, cfg.llm_hidden_size)
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0  # right padding
    with torch.no_grad():
        prefix = lm.encode_prefix(prefix_embeds)
        text_hidden = lm.run_text(prefix, ids, mask)
        assert prefix.cache.get_seq_length() == 9
        again = lm.run_text(prefix, ids, mask)  # a second stream from the same cache gives the same result
        full = _full_hidden(
            lm, torch.cat([prefix_embeds, lm.embed(ids)], 1), torch.cat([torch.ones(2, 9, dtype=torch.long), mask], 1)
        )
    assert torch.allclose(prefix.hidden, full[:, :9], atol=1e-5)
    assert torch.allclose(text_hidden[0], full[0, 9:], atol=1e-5)
    assert torch.allclose(text_hidden[1, :4], full[1, 9:13], atol=1e-5)
    assert torch.allclose(again, text_hidden, atol=1e-6)
    # causal attention: the scene tokens' states do not depend on the text
    with torch.no_grad():
        other = _full_hidden(lm, torch.cat([prefix_embeds, lm.embed(ids.flip(1))], 1))
    assert torch.allclose(other[:, :9], full[:, :9], atol=1e-5)


def test_lm_loss_equals_transformers_causal_lm_loss(lm, cfg):
    """Eq. 5 computed on answer tokens only equals transformers' own shifted cross-entropy on the full sequence."""
    torch.manual_seed(2)
    prefix_embeds = torch.randn(2, 5, cfg.llm_hidden_size)
    ids = torch.randint(5, 100, (2, 8))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX  # prompt
    labels[1, 7] = IGNORE_INDEX
    with torch.no_grad():
        prefix = lm.encode_prefix(prefix_embeds)
        nll, count = lm.lm_loss_terms(lm.run_text(prefix, ids, torch.ones_like(ids)), labels)
        full_labels = torch.cat([torch.full((2, 5), IGNORE_INDEX), labels], 1)
        ref = lm.base_model(inputs_embeds=torch.cat([prefix_embeds, lm.embed(ids)], 1), labels=full_labels).loss
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(nll / count, ref, atol=1e-5)


def test_greedy_generation_matches_uncached_argmax(lm, tokenizer, cfg):
    """Batched cached generation (prompts of different lengths) == per-item argmax over full recomputation."""
    torch.manual_seed(3)
    prefix_embeds = torch.randn(2, 6, cfg.llm_hidden_size)
    prompts = [
        encode_qa(tokenizer, "Describe the driving scene around the ego vehicle.", None, cfg.max_text_tokens)[0],
        encode_qa(tokenizer, "Is there a traffic light ahead?", None, cfg.max_text_tokens)[0],
    ]
    assert len(prompts[0]) != len(prompts[1])
    steps = 5
    with torch.no_grad():
        prefix = lm.encode_prefix(prefix_embeds)
        out = lm.generate(prefix, prompts, max_new_tokens=steps)
        assert prefix.cache.get_seq_length() == 6  # cropped back for the next question
        for i in range(2):
            seq = list(prompts[i])
            expect = []
            for _ in range(steps):
                emb = torch.cat([prefix_embeds[i : i + 1], lm.embed(torch.tensor([seq]))], 1)
                h = _full_hidden(lm, emb)
                token = int(lm.lm_head(h[0, -1]).argmax())
                expect.append(token)
                seq.append(token)
                if token == tokenizer.eos_token_id:
                    break
            h = _full_hidden(lm, torch.cat([prefix_embeds[i : i + 1], lm.embed(torch.tensor([seq]))], 1))
            n_gen = len(expect)
            assert out.token_ids[i] == expect
            assert int(out.mask[i].sum()) == n_gen
            # hidden states of the generated tokens = their states when fed as input
            assert torch.allclose(out.hidden[i, :n_gen], h[0, -n_gen:], atol=1e-4)
        # a second question from the same cached prefix equals a fresh prefix
        again = lm.generate(lm.encode_prefix(prefix_embeds), prompts, max_new_tokens=steps)
        repeat = lm.generate(prefix, prompts, max_new_tokens=steps)
    assert repeat.token_ids == again.token_ids == out.token_ids
    assert out.texts == [t.strip() for t in tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)]


def test_generation_stops_at_eos(cfg, tokenizer):
    """When EOS wins, generation stops after feeding it once: one token per item, mask and hidden of length 1."""
    lm = SceneLanguageModel(cfg, len(tokenizer), tokenizer).eval()

    class EosHead(torch.nn.Module):  # an LM head whose argmax is always EOS
        def forward(self, h):
            logits = torch.zeros(*h.shape[:-1], len(tokenizer))
            logits[..., tokenizer.eos_token_id] = 1.0
            return logits

    lm.base_model.set_output_embeddings(EosHead())
    with torch.no_grad():
        prefix = lm.encode_prefix(torch.randn(2, 4, cfg.llm_hidden_size))
        prompt = encode_qa(tokenizer, "Is there a car?", None, cfg.max_text_tokens)[0]
        out = lm.generate(prefix, [prompt, prompt], max_new_tokens=8)
    assert out.token_ids == [[tokenizer.eos_token_id]] * 2
    assert out.hidden.shape == (2, 1, cfg.llm_hidden_size) and out.mask.all()
    assert out.texts == ["", ""]


def test_local_llm_path_loads_and_missing_path_is_clear(tmp_path, cfg, tokenizer):
    base = build_causal_lm(cfg, len(tokenizer) + 3, tokenizer)
    base.save_pretrained(tmp_path / "llm")
    local = SparseOccVLAConfig.tiny(llm_path=str(tmp_path / "llm"))
    lm = SceneLanguageModel(local, len(tokenizer), tokenizer)
    # loaded from disk (weights equal) and resized to the tokenizer
    assert lm.base_model.get_input_embeddings().num_embeddings == len(tokenizer)
    w_saved = base.get_decoder().layers[0].mlp.up_proj.weight
    w_loaded = lm.base_model.get_decoder().layers[0].mlp.up_proj.weight
    assert torch.equal(w_saved, w_loaded)
    with pytest.raises(FileNotFoundError, match="llm_path .* is not a local folder"):
        SceneLanguageModel(SparseOccVLAConfig.tiny(llm_path=str(tmp_path / "nope")), len(tokenizer), tokenizer)


def test_encode_qa_cuts_a_long_answer_keeps_eos_and_warns_once(tokenizer, caplog, monkeypatch):
    import sparseoccvla_core.tokenizer as tok_mod

    monkeypatch.setattr(tok_mod, "_warned_truncation", False)
    question = "Can you provide a summary of the current driving scenario based on the input images?"
    answer = " ".join(["The ego vehicle is driving at 9.9 m/s on a straight two-lane road."] * 6)
    prompt_len = len(encode_qa(tokenizer, question, None, 10_000)[0])
    full_ids, full_labels = encode_qa(tokenizer, question, answer, 10_000)
    answer_len = len(full_ids) - prompt_len  # answer tokens + EOS
    assert answer_len > 60
    limit = prompt_len + 40  # answer budget 40 > limit // 4, so the question is kept whole
    with caplog.at_level("WARNING", logger="sparseoccvla_core.tokenizer"):
        ids, labels = encode_qa(tokenizer, question, answer, limit)
        encode_qa(tokenizer, question, answer, limit)
    assert len(ids) == len(labels) == limit
    assert ids[:prompt_len] == full_ids[:prompt_len]
    assert ids[prompt_len:-1] == full_ids[prompt_len : limit - 1]  # the answer's start, then EOS
    assert ids[-1] == labels[-1] == tokenizer.eos_token_id
    cut = [r for r in caplog.records if "max_text_tokens" in r.getMessage()]
    assert len(cut) == 1 and f"{answer_len} tokens" in cut[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="sparseoccvla_core.tokenizer"):
        monkeypatch.setattr(tok_mod, "_warned_truncation", False)
        ids, labels = encode_qa(tokenizer, question, answer, len(full_ids))  # fits exactly: nothing cut
    assert ids == full_ids and labels == full_labels and not caplog.records
