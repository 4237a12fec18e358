"""Build configuration: frozen dataclasses, one full config (committed zoo) and one small (tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class LMArch:
    """A GPT-2-architecture LM (TransformerLens names)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    n_ctx: int


@dataclass(frozen=True)
class TrainSpec:
    """One LM training run: AdamW, linear warm-up then cosine decay to 10 % of lr."""

    steps: int
    lr: float
    batch_rows: int = 32  # rows of n_ctx tokens per step
    warmup: int = 20
    weight_decay: float = 0.01
    mix: tuple[tuple[str, float], ...] = (("prose", 1.0),)  # (split, weight): rows drawn by weight


@dataclass(frozen=True)
class SaeSpec:
    """A SAELens SAE trained by LanguageModelSAETrainingRunner: "standard" (ReLU + L1) unless an `ExtraSae`
    names another architecture (the l1 fields then do not apply)."""

    d_sae: int
    l1_coefficient: float
    training_tokens: int
    lr: float = 5e-4
    l1_warm_up_frac: float = 0.05
    train_batch_size_tokens: int = 4096


@dataclass(frozen=True)
class ExtraSae:
    """An SAE the `zoo saes` stage adds to a built zoo, trained on one of its committed models.

    `architecture` picks the SAELens training config (`StandardTrainingSAEConfig`, `TopKTrainingSAEConfig`,
    `JumpReLUTrainingSAEConfig`); `arch` holds that config's own fields (k, l0_coefficient, ...). The
    spec's l1 fields only apply to "standard"; its l1_warm_up_frac is JumpReLU's L0 warm-up too.
    """

    name: str  # saes/<name>
    model: str  # models/<model>
    layer: int  # blocks.<layer>.hook_resid_pre
    spec: SaeSpec
    architecture: str = "standard"
    arch: tuple[tuple[str, Any], ...] = ()
    why: str = ""  # the reason for its settings, for the README

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"arch": dict(self.arch), "hook_name": self.hook_name}


@dataclass(frozen=True)
class ZooConfig:
    seed: int = 0
    hook_layer: int = 2
    # corpora: at most this many stdlib files (sorted, then a seeded sample); 0 = all
    max_files: int = 0
    eval_file_frac: float = 0.12  # stdlib files (and pydoc topics) held out from all training
    n_math_train: int = 2000
    n_math_eval: int = 400
    vocab_size: int = 4096
    retok_vocab_size: int = 3000
    tokenizer_chars: int = 12_000_000  # training text cap for the tokenizers
    base: LMArch = LMArch(n_layers=4, d_model=128, n_heads=4, d_mlp=512, n_ctx=128)
    retok: LMArch = LMArch(n_layers=2, d_model=64, n_heads=2, d_mlp=256, n_ctx=128)
    base_train: TrainSpec = TrainSpec(steps=320, lr=2e-3, warmup=20)
    code_train: TrainSpec = TrainSpec(steps=300, lr=3e-3, warmup=10, mix=(("code", 1.0),))
    math_train: TrainSpec = TrainSpec(steps=30, lr=2e-4, warmup=5, mix=(("prose", 0.8), ("math", 0.2)))
    retok_train: TrainSpec = TrainSpec(steps=120, lr=3e-3, warmup=10, mix=(("prose", 0.7), ("code", 0.3)))
    sae: SaeSpec = SaeSpec(d_sae=1024, l1_coefficient=2.5, training_tokens=2_400_000, lr=1e-3)
    eval_rows: int = 1024  # rows of the committed eval token sets (each n_ctx ids, BOS first)
    loss_eval_rows: int = 128  # rows per split for the manifest's LM losses
    cosine_rows: int = 256  # rows of held-out prose for activation cosine
    sae_eval_batches: int = 16  # run_evals batches of 16 prompts
    save_bf16: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = ZooConfig()

# Same code paths, a few seconds each: the builder test runs this.
SMALL = replace(
    FULL,
    max_files=60,
    n_math_train=300,
    n_math_eval=60,
    vocab_size=512,
    retok_vocab_size=400,
    tokenizer_chars=600_000,
    base=LMArch(n_layers=3, d_model=32, n_heads=2, d_mlp=128, n_ctx=32),
    retok=LMArch(n_layers=1, d_model=16, n_heads=1, d_mlp=64, n_ctx=32),
    base_train=TrainSpec(steps=8, lr=3e-3, batch_rows=8, warmup=2),
    code_train=TrainSpec(steps=4, lr=1e-3, batch_rows=8, warmup=1, mix=(("code", 1.0),)),
    math_train=TrainSpec(steps=2, lr=3e-4, batch_rows=8, warmup=1, mix=(("prose", 0.8), ("math", 0.2))),
    retok_train=TrainSpec(steps=2, lr=3e-3, batch_rows=8, warmup=1, mix=(("prose", 0.7), ("code", 0.3))),
    sae=SaeSpec(d_sae=64, l1_coefficient=5.0, training_tokens=8192, train_batch_size_tokens=512),
    eval_rows=64,
    loss_eval_rows=8,
    cosine_rows=16,
    sae_eval_batches=2,
)

# `zoo saes`: more SAEs on the committed models, each trained like base-relu (its d_sae, training prose,
# token budget, lr, seed and normalisation); only the architecture's own fields differ.
EXTRA_SPEC = FULL.sae
_EXTRA_STEPS = EXTRA_SPEC.training_tokens // EXTRA_SPEC.train_batch_size_tokens
_LAYER_WHY = "layer sweep: base-relu's recipe at another hook of the zoo's 4 layers"
EXTRA_SAES: tuple[ExtraSae, ...] = (
    ExtraSae("base-relu-l1", "base", 1, EXTRA_SPEC, why=_LAYER_WHY),
    ExtraSae("base-relu-l3", "base", 3, EXTRA_SPEC, why=_LAYER_WHY),
    ExtraSae("code-relu-l1", "code", 1, EXTRA_SPEC, why="code-relu's recipe at layer 1, on prose as code-relu"),
    ExtraSae("code-relu-l3", "code", 3, EXTRA_SPEC, why="code-relu's recipe at layer 3, on prose as code-relu"),
    ExtraSae("base-topk", "base", 2, EXTRA_SPEC, "topk", (("k", 48),),
             why="SAELens TopK with its default aux loss, k 48: base-relu's L0 is 46 at the end of training and 53 "
                 "on held-out prose, so k 48 gives TopK the same sparsity (fixed: its L0 cannot grow on a finetune)"),
    ExtraSae("base-jumprelu", "base", 2, EXTRA_SPEC, "jumprelu",
             (("jumprelu_sparsity_loss_mode", "quadratic"), ("target_l0", 48.0), ("l0_coefficient", 1.0),
              ("jumprelu_init_threshold", 0.1), ("jumprelu_bandwidth", 0.05), ("jumprelu_ste_to_input", True),
              ("l0_warm_up_steps", _EXTRA_STEPS // 4), ("pre_act_loss_coefficient", 0.01)),
             why="SAELens JumpReLU, free L0 at inference; trained with the quadratic L0 penalty around 48 (Gemma "
                 "Scope 2) and the straight-through gradient reaching the encoder: with DeepMind's plain L0 "
                 "penalty the threshold moves at most lr per step, so in 390 steps it stayed far below the "
                 "activations (a 117-step pilot: threshold 0.22, L0 559)"),
)

# the same SAEs for a `build --small` zoo (3 layers: the sweep reads layers 1 and 2)
SMALL_EXTRA_SAES: tuple[ExtraSae, ...] = tuple(
    replace(e, layer=min(e.layer, SMALL.base.n_layers - 1), spec=SMALL.sae,
            arch=tuple((k, 8) if k in ("k", "target_l0") else (k, 4) if k == "l0_warm_up_steps" else (k, v)
                       for k, v in e.arch))
    for e in EXTRA_SAES)
