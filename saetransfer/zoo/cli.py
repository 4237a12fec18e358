"""`zoo build | saes | install | verify`: the only ways files get into fixtures/zoo.

`saes` adds the SAEs of `config.EXTRA_SAES` to a built zoo (fixtures/zoo by default, in place) from its
committed files, leaving every other file byte-identical.

`python -m saetransfer zoo ...` calls `main` with the arguments after `zoo`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from saetransfer.offline import set_offline_environment
from saetransfer.paths import REPO_ROOT, ZOO
from saetransfer.zoo import manifest

DEFAULT_BUILD = REPO_ROOT / "zoo-build"  # gitignored; fixtures/ only changes through `install`


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="saetransfer zoo", description="Build, install and verify the tiny model zoo.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the whole zoo from a seed (offline, CPU)")
    b.add_argument("--out", type=Path, default=DEFAULT_BUILD, help=f"output dir (default: {DEFAULT_BUILD})")
    b.add_argument("--small", action="store_true", help="tiny config for tests (seconds, same code)")
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("saes", help="train the extra SAEs (config.EXTRA_SAES) on a built zoo's committed models")
    s.add_argument("--zoo", type=Path, default=ZOO, help=f"the built zoo to read (default: {ZOO})")
    s.add_argument("--out", type=Path, default=None, help="write zoo + SAEs here (default: into --zoo, in place)")
    s.add_argument("--only", nargs="+", metavar="NAME", help="train only these extra SAEs")
    s.add_argument("--small", action="store_true", help="for a `build --small` zoo: tiny SAEs (seconds, same code)")
    i = sub.add_parser("install", help="replace fixtures/zoo with a built zoo (after verifying it)")
    i.add_argument("dir", type=Path)
    v = sub.add_parser("verify", help="check files against the manifest's sha256 hashes")
    v.add_argument("dir", type=Path, nargs="?", default=ZOO)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "build":
        return _build(args.out, args.small, args.seed)
    if args.cmd == "saes":
        return _saes(args.zoo, args.out or args.zoo, args.only, args.small)
    if args.cmd == "install":
        return install(args.dir, ZOO)
    return _verify(args.dir)


def _build(out: Path, small: bool, seed: int) -> int:
    set_offline_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from saetransfer.zoo.build import build_zoo
    from saetransfer.zoo.config import FULL, SMALL

    res = build_zoo(out.resolve(), replace(SMALL if small else FULL, seed=seed))
    print(f"built {res.out_dir} in {res.seconds:.0f} s; span checks: {res.manifest['span_checks']}")
    if not small and not res.span_ok:  # the small config is too tiny to span anything; only its structure counts
        print("zoo build: the full zoo does not span the verdicts; do not install it", file=sys.stderr)
        return 2
    return 0


def _saes(zoo: Path, out: Path, only: list[str] | None, small: bool) -> int:
    set_offline_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from saetransfer.zoo.config import EXTRA_SAES, FULL, SMALL, SMALL_EXTRA_SAES
    from saetransfer.zoo.extra_saes import ZooInputError, add_saes

    try:  # the seed is the build's (`build --seed`); the rest of its config must be FULL's (or SMALL's)
        seed = manifest.read(zoo)["seed"]
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"zoo saes: {zoo} is not a built zoo: {err}", file=sys.stderr)
        return 1
    cfg, extras = (SMALL, SMALL_EXTRA_SAES) if small else (FULL, EXTRA_SAES)
    cfg = replace(cfg, seed=seed)
    unknown = sorted(set(only or ()) - {e.name for e in extras})
    if unknown:
        print(f"zoo saes: unknown SAE names {unknown}; known: {[e.name for e in extras]}", file=sys.stderr)
        return 2
    chosen = [e for e in extras if not only or e.name in only]
    try:
        man = add_saes(zoo, out, cfg, chosen, [e.name for e in extras])
    except ZooInputError as err:
        print(f"zoo saes: {err}", file=sys.stderr)
        return 1
    for e in chosen:
        ev = man["saes"][e.name]["eval_on_own_model_prose"]
        print(f"{e.name}: {man['saes'][e.name]['saelens_architecture']} at {e.hook_name} of models/{e.model}: "
              f"EV {ev['explained_variance']:.3f}, L0 {ev['l0']:.1f}, CE recovered {ev['ce_loss_score']:.3f}")
    return _verify(out)


def _verify(root: Path) -> int:
    problems = manifest.verify(root)
    if problems:
        print(f"zoo verify: {root} does not match its manifest:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"zoo verify: {root}: {len(manifest.read(root)['files'])} files match manifest.json")
    return 0


def install(src: Path, dest: Path) -> int:
    """Copy a verified build over `dest`, atomically enough: copy beside it, then swap."""
    problems = manifest.verify(src)
    if problems:
        print(f"zoo install: refusing {src}: no valid manifest or files do not match:", *problems, sep="\n  ",
              file=sys.stderr)
        return 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".zoo-new-", dir=dest.parent))
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    if manifest.verify(tmp):
        shutil.rmtree(tmp)
        print("zoo install: the copy does not verify; fixtures untouched", file=sys.stderr)
        return 1
    old = dest.with_name(".zoo-old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"zoo install: {src} -> {dest}")
    return _verify(dest)
