"""Text corpora from what every Python install has: the standard library and a seeded generator.

- prose: docstrings and comments of the stdlib `.py` files, plus `pydoc_data.topics` (English reference text)
- code:  the same files with docstrings and comments removed (`ast.unparse`)
- math:  seeded, templated word problems with worked answers (GSM8K-like, generated here)

Held-out evaluation text is chosen per *file* (and per pydoc topic), so no model ever trains on any part
of an eval file, in either domain. The stdlib differs a little between Python versions; the committed
token sets are what the zoo was evaluated on.
"""

from __future__ import annotations

import ast
import hashlib
import io
import random
import sys
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

PROVENANCE = {
    "prose": "CPython standard library docstrings and comments (Lib/**/*.py, tests excluded) and "
             "pydoc_data.topics, from the running interpreter",
    "code": "CPython standard library source (same files), docstrings and comments stripped via ast.unparse",
    "math": "generated here from templates and a seeded RNG (saetransfer/zoo/corpora.py)",
}
LICENCE = {
    "prose": "PSF-2.0 (Python Software Foundation License)",
    "code": "PSF-2.0 (Python Software Foundation License)",
    "math": "MIT (this project)",
}
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "turtledemo"}


@dataclass(frozen=True)
class Corpora:
    """Documents per split; `train[...]` and `eval[...]` share no source file."""

    train: dict[str, list[str]]
    eval: dict[str, list[str]]
    stats: dict[str, dict[str, int]]


def _held_out(key: str, seed: int, frac: float) -> bool:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < frac


def stdlib_files(max_files: int, seed: int) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not _SKIP_DIRS & set(p.relative_to(root).parts[:-1]) and not p.name.startswith("test_"))
    if max_files and len(files) > max_files:
        files = sorted(random.Random(seed).sample(files, max_files))
    return files


def _docstring_nodes(tree: ast.AST) -> list[ast.Constant]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.append(first.value)
    return out


def _comments(src: str) -> list[str]:
    """Runs of consecutive comment lines, joined into paragraphs (licence headers and shebangs dropped)."""
    paras: list[list[str]] = []
    last = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type != tokenize.COMMENT:
                continue
            text = tok.string.lstrip("#!").strip()
            if not text or set(text) <= set("-=*#~_ "):
                continue
            if tok.start[0] == last + 1 and paras:
                paras[-1].append(text)
            else:
                paras.append([text])
            last = tok.start[0]
    except (tokenize.TokenError, SyntaxError):
        return []
    return [" ".join(p) for p in paras if sum(len(t) for t in p) >= 40]


def split_file(src: str) -> tuple[str, str] | None:
    """(prose, code) of one source file; None if it does not parse on this Python."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    docs = [_clean(d.value) for d in _docstring_nodes(tree)]
    prose = "\n\n".join([d for d in docs if len(d) >= 40] + _comments(src))
    for d in _docstring_nodes(tree):
        d.value = ""  # empty docstring expressions are then dropped below
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                            and s.value.value == "")]
            node.body = kept or [ast.Pass()]
    try:
        code = ast.unparse(tree)
    except (ValueError, RecursionError):
        return None
    return prose, code


def _clean(doc: str) -> str:
    import inspect

    return inspect.cleandoc(doc)


def pydoc_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


# ---------------------------------------------------------------------------------------------- math
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jamal", "Kira", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor", "Wen", "Yusuf"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells", "cards", "coins",
          "balloons", "oranges", "tickets", "beads", "eggs", "flowers"]
_SHOPS = ["market", "bakery", "bookshop", "toy store", "fair", "garden centre"]


def _problem(rng: random.Random) -> str:
    n, m = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(6)
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 12)
    if kind == 0:
        r = a + b - min(c, a + b)
        c = min(c, a + b)
        q = f"{n} has {a} {item}. {n} buys {b} more and gives {c} to {m}. How many {item} does {n} have now?"
        s = f"{n} starts with {a} {item}. After buying {b} more, {n} has {a} + {b} = {a + b}. " \
            f"After giving {c} away, {n} has {a + b} - {c} = {r}."
    elif kind == 1:
        q = f"Each box holds {c} {item}. {n} fills {b} boxes. How many {item} are there in all?"
        s = f"There are {b} boxes with {c} {item} each, so {b} * {c} = {b * c}."
        r = b * c
    elif kind == 2:
        total = c * b
        q = f"{n} shares {total} {item} equally among {c} friends. How many {item} does each friend get?"
        s = f"Each friend gets {total} / {c} = {b}."
        r = b
    elif kind == 3:
        p = rng.randint(2, 9)
        q = f"At the {rng.choice(_SHOPS)}, {item} cost ${p} each. {n} buys {c} and pays with ${p * c + a}. " \
            f"How much change does {n} get?"
        s = f"The {item} cost {c} * {p} = {p * c} dollars. The change is {p * c + a} - {p * c} = {a}."
        r = a
    elif kind == 4:
        q = f"{n} reads {c} pages a day for {b} days, then {a} pages on the last day. How many pages is that?"
        s = f"First {c} * {b} = {c * b} pages, then {c * b} + {a} = {c * b + a}."
        r = c * b + a
    else:
        q = f"{n} has {a} {item} and {m} has {b} more than twice as many. How many do they have together?"
        s = f"{m} has 2 * {a} + {b} = {2 * a + b}. Together they have {a} + {2 * a + b} = {3 * a + b}."
        r = 3 * a + b
    return f"Question: {q}\nAnswer: {s} The answer is {r}."


def math_problems(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["\n\n".join(_problem(rng) for _ in range(rng.randint(3, 8))) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- all
def build_corpora(seed: int, max_files: int, eval_frac: float, n_math_train: int, n_math_eval: int) -> Corpora:
    train: dict[str, list[str]] = {"prose": [], "code": [], "math": []}
    ev: dict[str, list[str]] = {"prose": [], "code": [], "math": []}
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(max_files, seed)
    n_files = {"train": 0, "eval": 0, "unparsable": 0}
    for path in tqdm(files, desc="stdlib files", unit="file", mininterval=2):
        try:
            src = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            n_files["unparsable"] += 1
            continue
        parts = split_file(src)
        if parts is None:
            n_files["unparsable"] += 1
            continue
        held = _held_out(str(path.relative_to(root)), seed, eval_frac)
        dest = ev if held else train
        n_files["eval" if held else "train"] += 1
        prose, code = parts
        if prose.strip():
            dest["prose"].append(prose)
        if code.strip():
            dest["code"].append(code)
    for key, text in pydoc_topics().items():
        (ev if _held_out(f"pydoc:{key}", seed, eval_frac) else train)["prose"].append(text)
    train["math"] = math_problems(n_math_train, seed)
    ev["math"] = math_problems(n_math_eval, seed + 10_000)
    stats = {f"{part}/{k}": {"docs": len(v), "chars": sum(map(len, v))}
             for part, d in (("train", train), ("eval", ev)) for k, v in d.items()}
    stats["files"] = n_files | {"python": sys.version_info[:3]}  # type: ignore[dict-item]
    return Corpora(train=train, eval=ev, stats=stats)
