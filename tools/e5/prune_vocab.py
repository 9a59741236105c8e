"""Shrink an XLM-R-vocabulary encoder checkpoint to the pieces a corpus actually uses.

Why: XLM-R's 250k-piece embedding matrix is most of a small encoder (96 M of e5-small's 118 M
parameters) while the AuTexTification training text uses ~33k pieces. Keeping the special tokens,
the K most frequent pieces and the single-character pieces needed to spell every used piece shrinks
the checkpoint ~10x, and for any text made only of kept pieces the pruned tokenizer picks the same
pieces (the unigram's best segmentation is still available and nothing better was added), so the
pruned model computes identical hidden states.

    python -m tools.e5.prune_vocab --model e5/full-6l --out e5/pruned-6l --keep 24000   # data: ../shared

Reads an HF-layout encoder dir (``model.safetensors`` with ``embeddings.word_embeddings.weight``,
optionally ``roberta.``-prefixed; ``config.json``; a unigram ``tokenizer.json``), writes the same
layout with remapped rows, a matching tokenizer, and ``vocab_map.json`` (kept original ids, in new id
order, and coverage figures). Exit codes: 0 done, 1 self-check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autext_jax import cli
from autext_jax.errors import UsageError
from tools.e5.spm_tokenizer import build_xlmr_tokenizer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "autextification"
WORD_KEY = "embeddings.word_embeddings.weight"
SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


class PruneError(UsageError, ValueError):
    """Bad input for pruning (a directory without the expected files, a bad flag): one line, exit code 2."""


@dataclass(frozen=True)
class Selection:
    kept: np.ndarray  # original ids, ascending (= new id order)
    n_frequent: int  # pieces kept for frequency
    n_chars: int  # single-character pieces added to spell the used pieces
    n_unspellable: int  # used pieces kept because one of their characters has no single piece
    coverage: float  # fraction of corpus tokens whose piece is kept
    distinct_used: int


def read_unigram_pieces(model_dir: Path) -> list[tuple[str, float]]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise PruneError(f"no tokenizer.json in {model_dir}; pass a directory written by tools.e5.import_e5")
    model = json.loads(path.read_text())["model"]
    if model.get("type") != "Unigram" or model.get("unk_id") != 3:
        raise PruneError(f"{path} is not an XLM-R style unigram tokenizer (type Unigram, unk_id 3)")
    return [(piece, float(score)) for piece, score in model["vocab"]]


def count_pieces(tokenizer, texts: Sequence[str], vocab_size: int, batch: int = 2048) -> np.ndarray:
    """How often each piece id occurs when ``texts`` are tokenized (special tokens excluded)."""
    counts = np.zeros(vocab_size, np.int64)
    for start in range(0, len(texts), batch):
        encoded = tokenizer(list(texts[start : start + batch]), add_special_tokens=False)["input_ids"]
        flat = np.fromiter((i for ids in encoded for i in ids), np.int64)
        counts += np.bincount(flat, minlength=vocab_size)[:vocab_size]
    return counts


def select_pieces(
    pieces: Sequence[tuple[str, float]], counts: np.ndarray, keep: int, *, all_chars: bool = False
) -> Selection:
    """Specials + the ``keep`` most frequent used pieces + single characters so nothing new becomes <unk>."""
    names = [p for p, _ in pieces]
    specials = {i for i, p in enumerate(names) if p in SPECIAL_PIECES}
    single = {p: i for i, p in enumerate(names) if len(p) == 1}
    used = np.flatnonzero(counts > 0)
    candidates = np.array([i for i in used if i not in specials], np.int64)  # <unk> may be counted
    order = candidates[np.argsort(-counts[candidates], kind="stable")]
    frequent = {int(i) for i in order[:keep]}
    kept = specials | frequent
    chars: set[int] = set(single.values()) if all_chars else set()
    unspellable: set[int] = set()
    for piece_id in (int(i) for i in order[keep:]):
        piece = names[piece_id]
        if all(ch in single for ch in piece):
            chars.update(single[ch] for ch in piece)  # a dropped piece is re-spelt from smaller kept ones
        else:
            unspellable.add(piece_id)  # dropping it would turn a character into <unk>
    chars -= kept
    unspellable -= chars
    kept |= chars | unspellable
    kept_ids = np.array(sorted(kept), np.int64)
    total = counts.sum()
    coverage = float(counts[kept_ids].sum() / total) if total else 1.0
    return Selection(kept_ids, len(frequent), len(chars), len(unspellable), coverage, int(used.size))


def load_texts(paths: Sequence[Path]) -> list[str]:
    """The training texts, read by the same loader training uses."""
    from autext_jax.data.dataset import load_examples

    return list(load_examples([str(p) for p in paths])["text"])


def _load_state(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise PruneError(f"no model.safetensors in {model_dir}")
    return load_file(str(path))


def write_pruned(model_dir: Path, out_dir: Path, pieces: Sequence[tuple[str, float]], sel: Selection) -> None:
    """Pruned weights (word rows gathered), config (new vocab_size), tokenizer and vocab_map.json."""
    from safetensors.numpy import save_file

    state = _load_state(model_dir)
    word_keys = [k for k in state if k.endswith(WORD_KEY)]
    if len(word_keys) != 1:
        raise PruneError(f"{model_dir}/model.safetensors has {len(word_keys)} '{WORD_KEY}' tensors, need 1")
    word = state[word_keys[0]]
    if word.shape[0] < len(pieces):
        raise PruneError(f"embedding has {word.shape[0]} rows but the tokenizer {len(pieces)} pieces")
    state[word_keys[0]] = np.ascontiguousarray(word[sel.kept])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only; it is shipped
    config = json.loads((model_dir / "config.json").read_text())
    config["vocab_size"] = int(sel.kept.size)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    build_xlmr_tokenizer([pieces[i] for i in sel.kept], out_dir)
    vocab_map = {
        "source": str(model_dir),
        "source_vocab_size": int(word.shape[0]),
        "vocab_size": int(sel.kept.size),
        "coverage": sel.coverage,
        "distinct_pieces_used": sel.distinct_used,
        "frequent_kept": sel.n_frequent,
        "single_chars_added": sel.n_chars,
        "unspellable_kept": sel.n_unspellable,
        "original_ids": sel.kept.tolist(),
    }
    (out_dir / "vocab_map.json").write_text(json.dumps(vocab_map) + "\n")
    if (model_dir / "SOURCE.md").is_file():
        note = (model_dir / "SOURCE.md").read_text()
        note += (
            f"\nVocabulary pruned by `tools/e5/prune_vocab.py` to {sel.kept.size} pieces "
            f"({100 * sel.coverage:.2f}% of corpus tokens kept); `vocab_map.json` lists the original ids.\n"
        )
        (out_dir / "SOURCE.md").write_text(note)


def check_tokenization(
    full_tok, pruned_tok, texts: Sequence[str], kept: np.ndarray, vocab_size: int
) -> dict[str, int]:
    """Texts made only of kept pieces must get the same (remapped) ids; no text may gain <unk>.

    Also counts tokens under both tokenizers: dropped pieces are re-spelt, so texts get longer.
    """
    new_id = np.full(vocab_size, -1, np.int64)
    new_id[kept] = np.arange(kept.size)
    full = full_tok(list(texts), add_special_tokens=False)["input_ids"]
    pruned = pruned_tok(list(texts), add_special_tokens=False)["input_ids"]
    unk = 3
    stats = {"texts": len(texts), "all_kept": 0, "identical": 0, "more_unk": 0}
    stats["tokens_full"] = sum(len(f) for f in full)
    stats["tokens_pruned"] = sum(len(p) for p in pruned)
    for f, p in zip(full, pruned, strict=True):
        remapped = new_id[np.asarray(f, np.int64)]
        stats["more_unk"] += int(p.count(unk) > f.count(unk))
        if np.all(remapped >= 0):
            stats["all_kept"] += 1
            stats["identical"] += int(remapped.tolist() == list(p))
    return stats


def check_hidden_states(full_dir: Path, pruned_dir: Path, texts: Sequence[str]) -> float:
    """Max |difference| of XLMRobertaModel hidden states, full vs pruned, on the given texts."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaModel

    worst = 0.0
    outs = []
    for directory in (full_dir, pruned_dir):
        model = XLMRobertaModel.from_pretrained(str(directory), add_pooling_layer=False).eval()
        tok = AutoTokenizer.from_pretrained(str(directory))
        with torch.no_grad():
            outs.append([model(**tok(t, return_tensors="pt")).last_hidden_state.numpy() for t in texts])
    for a, b in zip(*outs, strict=True):
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="HF-layout encoder dir (full vocabulary)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", nargs="+", type=Path, default=[DEFAULT_DATA], help="training files or dirs")
    parser.add_argument("--keep", type=int, default=24_000, help="most frequent pieces to keep (K)")
    parser.add_argument("--all-chars", action="store_true", help="keep every single-character piece")
    parser.add_argument(
        "--report",
        type=int,
        nargs="*",
        default=[8000, 16000, 24000, 32000],
        help="also print the coverage these K would give",
    )
    parser.add_argument(
        "--check-texts", type=int, default=4, help="texts for the hidden-state check (0: skip)"
    )
    cli.add_debug_flag(parser)
    return cli.main("prune_vocab", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    started = time.perf_counter()
    if args.keep < 1:
        raise PruneError(f"--keep must be positive, got {args.keep}")
    pieces = read_unigram_pieces(args.model)
    full_tok = AutoTokenizer.from_pretrained(str(args.model))
    texts = load_texts(args.data)
    counts = count_pieces(full_tok, texts, len(pieces))
    print(
        f"{len(texts)} texts, {counts.sum()} tokens, {int((counts > 0).sum())} distinct pieces "
        f"({time.perf_counter() - started:.1f}s)"
    )
    for k in sorted(set(args.report)):
        s = select_pieces(pieces, counts, k, all_chars=args.all_chars)
        print(f"  K={k:>6}: vocab {s.kept.size:>6}, coverage {100 * s.coverage:.3f}%")
    sel = select_pieces(pieces, counts, args.keep, all_chars=args.all_chars)
    write_pruned(args.model, args.out, pieces, sel)
    print(
        f"kept {sel.kept.size} pieces (specials + {sel.n_frequent} frequent + {sel.n_chars} single "
        f"characters + {sel.n_unspellable} unspellable); coverage {100 * sel.coverage:.3f}% "
        f"of {counts.sum()} tokens; wrote {args.out}"
    )
    pruned_tok = AutoTokenizer.from_pretrained(str(args.out))
    stats = check_tokenization(full_tok, pruned_tok, texts, sel.kept, len(pieces))
    ok = stats["identical"] == stats["all_kept"] and stats["more_unk"] == 0
    print(f"[check] tokenization: {stats}")
    if args.check_texts:
        new_id = set(sel.kept.tolist())
        sample = [t for t in texts[:2000] if set(full_tok(t)["input_ids"]) <= new_id][: args.check_texts]
        worst = check_hidden_states(args.model, args.out, sample)
        print(f"[check] hidden states full vs pruned on {len(sample)} texts: max |diff| {worst:.1e}")
        ok &= worst == 0.0 and len(sample) > 0
    print(f"{'done' if ok else 'SELF-CHECK FAILED'} in {time.perf_counter() - started:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
