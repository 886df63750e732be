"""The words, names, labels and fixed values the generated rows are drawn from.

Pools mix ASCII with astral-plane emoji, CJK, combining accents and RTL text,
because those are what break encoders, length checks and collations. JSON is
written as the app writes it: UTF-8 as is, or (now and then) ASCII with escapes.
"""

from __future__ import annotations

import json
from typing import Final

# fmt: off

WORDS: Final = (
    "sparse", "attention", "diffusion", "transformer", "retrieval", "agents", "benchmark",
    "scaling", "alignment", "graph", "neural", "quantum", "reasoning", "protein", "robotics",
    "compiler", "latency", "federated", "contrastive", "tokenizer", "distillation",
    "mixture-of-experts", "state-space", "kernel", "inference", "memory", "causal",
    "multimodal", "speculative", "decoding", "quantization", "curriculum", "reward", "policy",
    "planning", "embedding", "vector", "search", "synthetic", "data", "evaluation",
    "interpretability", "circuits", "long-context", "caching", "streaming", "consensus",
    "replication", "SQLite", "Postgres", "Rust", "WebGPU", "on-device", "low-rank", "adapters",
    "self-play", "verifier", "theorem", "proving", "materials", "climate", "weather",
    "genomics", "single-cell", "molecules", "uncertainty", "calibration", "robustness",
    "jailbreaks", "watermarking", "privacy", "optimizers", "Muon", "schedules", "tokens",
    "latent", "world-models",
)
UNICODE_BITS: Final = (
    "🚀", "🔥", "🧠", "🤖", "📈", "🦀", "🧪", "👩\u200d🔬",  # astral plane; a ZWJ sequence
    "\U0001d53c[reward]",  # double-struck E, astral plane
    "大规模语言模型的推理能力", "知識グラフ", "深層学習による画像認識", "트랜스포머 분석",
    "𠀋𠂢 (CJK Ext. B)", "naïve Bayes", "Schrödinger", "Gödel", "e\u0301tude",  # combining accent
    "التعلم العميق", "Ω(n log n)", "\u2248 3\u00d7 faster",
)
TITLE_TEMPLATES: Final = (
    "{A} {b} for {c} {d}",
    "Towards {a} {b}",
    "{A} {b}: {c} {d} at scale",
    "On the {a} of {b} {c}",
    "{A}-{b} {c} with {d} {e}",
    "Why {a} {b} fails",
    "{A} {b} is all you need",
    "Learning {a} {b} from {c}",
    "A survey of {a} {b}",
    "{A}{b}: fast {c} {d}",
)
SENTENCE_TEMPLATES: Final = (
    "We propose {a} {b}, a method for {c} {d} that needs no {e}.",
    "Our {a} {b} improves {c} by {n}% over strong {d} baselines.",
    'We call this "{a} {b}" and show it\'s competitive with {c}.',
    "Experiments on {n} {a} datasets suggest {b} {c} matters more than {d}.",
    "The {a} {b} scales to {n}k {c} with constant {d}.",
    "Code and {a} checkpoints are released for {b} {c}.",
    "Surprisingly, {a} {b} emerges without explicit {c} supervision.",
    "We analyse {a} under {b} shift and report {c} {d} failures.",
)
FIRST_NAMES: Final = (
    "Ada", "Alan", "Grace", "Yann", "Fei-Fei", "Geoffrey", "José", "Zoë", "Łukasz", "Søren",
    "Nguyễn", "王伟", "さくら", "민준", "Aisha", "Priya", "Olu", "Mateo", "Ingrid", "Chen",
)
LAST_NAMES: Final = (
    "Lovelace", "Turing", "Hopper", "Li", "Hinton", "García", "Müller", "Kowalski", "Nielsen",
    "Tran", "张", "佐藤", "김", "Okafor", "Sharma", "Rossi", "Andersson", "Dubois",
)
CATEGORIES: Final = (
    "llm", "agents", "robotics", "vision", "theory", "systems", "safety", "bio", "climate",
    "databases", "hci", "security",
)
SENTIMENTS: Final = ("positive", "neutral", "negative", "mixed")
TAGS: Final = (
    "open-source", "sota", "reproducible", "dataset", "benchmark", "preprint", "rust", "python",
    "cuda", "on-device", "long-context", "rlhf", "eval", "多言語", "🔥",
)
# fmt: on
LANGS: Final = ("en",) * 14 + ("ja", "zh", "ko", "de", "fr", "pt", "und", "es")
ANNOTATORS: Final = (
    "alice",
    "bob",
    "chen.wei",
    "dana",
    "zoë",
    "llm:gpt-4o-mini",
    "llm:claude-3-5-sonnet",
    "llm:llama-3.1-70b",
)
LABELS: Final = ("relevant", "irrelevant", "breakthrough", "duplicate", "spam", "needs_review")
MODELS: Final = ("gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-20241022", "llama-3.1-70b")
ARXIV_CATEGORIES: Final = ("cs.LG", "cs.AI", "cs.CL", "cs.CV", "cs.RO", "cs.DB", "stat.ML")
PROG_LANGS: Final = ("Python", "Rust", "C++", "Go", "TypeScript", "Julia", None)
VENUES: Final = ("NeurIPS", "ICML", "ICLR", "ACL", "VLDB", "SIGMOD", "Nature", "arXiv")
CURSOR_BASES: Final = (
    "arxiv:cs.LG",
    "arxiv:cs.AI",
    "arxiv:cs.CL",
    "arxiv:stat.ML",
    "github:trending:python",
    "github:search:stars>500",
    "x:list:ai-researchers",
    "x:home_timeline",
    "ss:bulk:2025",
    "ss:citations",
)
STATUSES_EXPERIMENT: Final = ("draft", "running", "completed", "completed", "archived")
STATUSES_BETA: Final = ("pending", "active", "active", "active", "revoked")
X_ID_BASE: Final = 1_850_000_000_000_000_000
ENCODE: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
ENCODE_ASCII: Final = json.JSONEncoder(allow_nan=False).encode  # \ud83d\ude80 escapes
