"""The training options, each declared once: its name, type, values, default, legacy value, help, where
`bnrun train --help` shows it, its column header, and whether the model builder takes it. The trial's
configuration (`bnrun.config.TrainConfig`), `train`'s options and their parsing, `--where`/`--by`, the
store's columns and the listings' headers are generated from `OPTIONS`.

A new option is one `Option` here, the training code that uses it, and (for a store column) a migration;
at its `legacy` value it stays out of the trial's key, so that every stored trial keeps its key."""

from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("mlp", "cnn")
PLACEMENTS = ("none", "pre", "post")
BN_IMPLS = ("custom", "torch")
OPTIMIZERS = ("sgd", "adam")
# onecycle: a warm-up over the first quarter from lr/25, a cosine anneal to lr/2.5e5, SGD's momentum cycled
# against it; onecycle-flat: the same without the momentum cycle; warmup: only the warm-up, then lr; cosine:
# only the anneal (to 0); constant: none of them.
SCHEDULES = ("onecycle", "cosine", "constant", "onecycle-flat", "warmup")
INITS = ("default", "kaiming")  # torch's nn.Linear/nn.Conv2d initialization | He-normal (bnrun.training.models)
PRECISIONS = ("fp32", "bf16")
# Fashion-MNIST's 60,000 training images: the first VALIDATION_SIZE of a fixed shuffle are held out for
# validation, the rest are the training split, which a batch or --train-subset cannot exceed.
FASHION_MNIST_TRAIN = 60_000
VALIDATION_SIZE = 5_000
TRAINING_SPLIT = FASHION_MNIST_TRAIN - VALIDATION_SIZE

NEW = object()  # an option every stored trial has had: no legacy value

MODEL, RECIPE, STUDY, PATH = ("The model", "The recipe", "Seeds and study", "How it runs (rounding, not math)")


@dataclass(frozen=True)
class Option:
    """One training option. Numbers are checked against `minimum` (exclusive where `positive`), `below`
    (exclusive) and `maximum`; a `None` default means the option may be left unset."""

    name: str
    kind: type
    default: object
    help: str
    panel: str
    short: str = ""  # a listing's column header (default: the name)
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    positive: bool = False
    below: float | None = None
    maximum: float | None = None
    legacy: object = NEW  # the value of trials stored before the option existed
    flag: bool = False  # a --name/--no-name switch, not a comma list
    grid: bool = True  # a comma list of values is a grid axis (False: one value)
    model_argument: str | None = None  # build_model's parameter for it
    text_length: int = 16  # the store column's width, for text
    indexed: bool = False  # the store indexes its column

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def optional(self) -> bool:
        return self.default is None

    @property
    def header(self) -> str:
        return self.short or self.name


# In the order a listing gives them columns: what tells runs apart first.
OPTIONS: tuple[Option, ...] = (
    Option("arch", str, "cnn", "mlp or cnn (mlp,cnn).", MODEL, choices=ARCHS, model_argument="arch", text_length=8,
           indexed=True),
    Option("bn", str, "pre", "BN placement: none, pre = g(BN(f(x))), post = BN(g(f(x))).", MODEL, choices=PLACEMENTS,
           model_argument="bn", text_length=8, indexed=True),
    Option("bn_impl", str, "custom", "custom (bnrun.nn) or torch (reference baseline).", MODEL, short="impl",
           choices=BN_IMPLS, model_argument="impl", text_length=8),
    Option("lr", float, 0.05, "Peak learning rate (0.01,0.1,1).", RECIPE, minimum=0, positive=True),
    Option("batch_size", int, 128, "Mini-batch size.", RECIPE, short="batch", minimum=2, maximum=TRAINING_SPLIT),
    Option("epochs", int, 10, "Epochs (default: mlp 20, cnn 10).", RECIPE, minimum=0, positive=True),
    Option("train_subset", int, None, "Use only the first N training images.", RECIPE, short="subset", minimum=2,
           maximum=TRAINING_SPLIT),
    Option("depth", int, None, "Hidden blocks (default: the assignment's model).",
           MODEL, minimum=1, legacy=None, model_argument="depth"),
    Option("width", int, None, "MLP width, CNN base channels (128, 32).",
           MODEL, minimum=1, legacy=None, model_argument="width"),
    Option("dropout", float, 0.0, "Dropout rate after each hidden block.", MODEL, minimum=0, below=1, legacy=0.0,
           model_argument="dropout"),
    Option("init", str, "default", "default (torch's) or kaiming (He-normal).", MODEL, choices=INITS,
           legacy="default", model_argument="init"),
    Option("ghost_batch", int, None, "BN statistics over chunks of N of each batch.", MODEL, short="ghost", minimum=2,
           legacy=None, model_argument="ghost_batch"),
    Option("target_loss", float, None, "Stop at this training loss.", RECIPE, short="target", minimum=0,
           positive=True, legacy=None),
    Option("label_smoothing", float, 0.0, "Cross-entropy label smoothing (0: none).", RECIPE, short="smooth",
           minimum=0, below=1, legacy=0.0),
    Option("study", str, None, "A tag: new trials beside stored ones.", STUDY, legacy=None, grid=False,
           text_length=64),
    Option("optimizer", str, "sgd", "sgd or adam.", RECIPE, short="optim.", choices=OPTIMIZERS),
    Option("schedule", str, "onecycle", "onecycle, cosine, constant, onecycle-flat or warmup.", RECIPE,
           short="sched.", choices=SCHEDULES),
    Option("momentum", float, 0.9, "SGD's Nesterov momentum (default 0.9; sgd only); under onecycle it "
           "cycles ±0.05 against the rate (0.85-0.95), so 0 or in [0.05, 0.95).", RECIPE, short="mom.", minimum=0,
           below=1),
    Option("weight_decay", float, 5e-4, "Weight decay.", RECIPE, short="wd", minimum=0),
    Option("augment", bool, True, "Random horizontal flips. Default: on.", RECIPE, short="flip", flag=True),
    Option("precision", str, "fp32", "fp32, bf16 (autocast; AVX512-BF16/AMX or a bf16 GPU), or auto: bf16 for the "
           "CNN on bf16 units, else fp32.", PATH, short="prec.", choices=PRECISIONS,
           legacy="fp32", text_length=8),
    Option("channels_last", bool, False, "The CNN in channels_last (NHWC) memory order. Default: on.", PATH,
           short="NHWC", legacy=False, flag=True, model_argument="channels_last"),
    Option("fused", bool, False, "The custom BN's fused fast path (C++ kernel on CPU, torch.compile on GPU). "
           "Default: on.", PATH, flag=True, model_argument="fused"),
)
BY_NAME = {option.name: option for option in OPTIONS}
LEGACY_VALUES = {option.name: option.legacy for option in OPTIONS if option.legacy is not NEW}
MODEL_ARGUMENTS = {option.name: option.model_argument for option in OPTIONS if option.model_argument}
