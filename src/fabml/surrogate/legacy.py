"""Import the seed SimulGenVAE's text configs (``condition.txt``, ``preset.txt``) into a :class:`SurrogateConfig`.

``condition.txt`` is read the way the seed reads it: text after ``#`` is a comment, lines that are
empty or start with ``%`` or ``'`` are skipped (section markers), and every other line is
``KEY VALUE`` (whitespace-separated; the last occurrence of a key wins). ``RESERVED`` lines are
placeholders and are ignored, as is the ``Common params`` title.

``preset.txt`` is line based: a header line, then ``data_No`` (the seed reads
``dataset<data_No>.pickle``), ``init_beta_divisor`` (the seed's first KL weight is
``10**-init_beta_divisor``), the VAE encoder filters and the latent conditioner filters
(space-separated integers).

How the seed's settings map (``key -> fabml setting``):

- Dim1 / Dim2 / Dim3 / num_var -> ``data.expected_shape`` [N, T, M, V] (checked when the fields open).
- Dim2_red (the seed keeps the first Dim2_red time steps) -> ``data.time_indices``; Dim3_start /
  Dim3_end (or the older Dim3_red = 0..Dim3_red) -> ``data.node_indices``; nothing when the full
  range is kept.
- Training_epochs / Batch_size / LearningR -> ``train_vae.epochs / batch_size / lr``;
  Latent_dim / Latent_dim_end -> ``vae.latent_dim / latent_dim_end``; Loss_type 1-4 ->
  ``vae.recon_loss`` mse / mae / smoothl1 / huber.
- alpha -> ``vae.alpha = 1 / alpha``: the seed multiplies the reconstruction term by alpha, fabml
  weights the KL term by alpha; dividing the seed's loss by its alpha gives fabml's loss.
- n_epoch / latent_conditioner_lr / latent_conditioner_batch / latent_conditioner_weight_decay ->
  ``train_conditioner`` (and ``train_e2e`` too when use_e2e_training = 1: the seed's e2e training
  replaces its conditioner training with the same settings); latent_conditioner_dropout_rate ->
  ``conditioner.dropout``; input_type image / image_vit / csv(s) -> ``conditioner.kind`` cnn / vit /
  mlp; param_dir -> ``data.inputs`` (an image folder is relative to where the seed ran: the
  leading ``/`` is dropped).
- use_e2e_training = 1 -> ``mode = all`` (VAE, conditioner, then e2e); e2e_loss_function ->
  ``e2e.loss``; use_latent_regularization / latent_reg_weight / LC_alpha -> ``e2e.latent_reg_weight =
  latent_reg_weight / LC_alpha`` (0 when regularisation is off; the seed's e2e loss is
  LC_alpha * recon + latent_reg_weight * reg).
- preset.txt: data_No -> ``data.fields = dataset<data_No>.pickle`` (training it needs
  ``--allow-pickle``); init_beta_divisor d -> ``vae.init_beta_divisor = 10**d`` (d = 0: no KL
  warm-up); encoder filters -> ``vae.preset = small`` when they are 1024 512 256 128, else
  ``vae.filters``; conditioner filters -> ``conditioner.blocks`` = their count and
  ``conditioner.hidden`` = the first (CNN base channels) or the largest (MLP / ViT width): an
  approximation, the architectures differ.

Every other key (augmentation, plotting, attention switches, model paths ...) and every value that
cannot be read is listed in :attr:`LegacyImport.unmapped` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fabml.errors import DataError
from fabml.surrogate.config import SurrogateConfig

LOSS_TYPES = {1: "mse", 2: "mae", 3: "smoothl1", 4: "huber"}
E2E_LOSSES = {"mse": "mse", "mae": "mae", "huber": "huber", "smoothl1": "smoothl1"}
INPUT_TYPES = {"image": "cnn", "image_vit": "vit", "csv": "mlp", "csvs": "mlp"}
SMALL_FILTERS = [1024, 512, 256, 128]
IGNORED = {"RESERVED"}
TITLES = {("Common", "params")}
NO_COUNTERPART = {
    "Stretch": "data augmentation by stretching has no fabml setting",
    "num_aug_f": "augmentation count has no fabml setting",
    "num_aug_a": "augmentation count has no fabml setting",
    "rec_graph": "plotting switch; fabml evaluate writes the figures",
    "Recon_iter": "reconstruction passes at evaluation; fabml evaluate makes one pass, MC dropout is predict --samples",
    "num_param": "fabml counts the parameters in the inputs CSV",
    "n_sample": "fabml counts the cases in the fields file",
    "param_data_type": "fabml reads .png .jpg .bmp .tif images of a folder, or a CSV, by path",
    "use_spatial_attention": "fabml's CNN conditioner always uses squeeze-and-excitation; no spatial-attention switch",
    "use_improved_e2e": "fabml has one e2e mode",
    "e2e_vae_model_path": "fabml keeps the VAE in the run folder; train --mode e2e --out RUN reuses it",
}


@dataclass
class LegacyImport:
    """The imported config, ``mapped`` (seed key -> ``"fabml.setting = value"``) and ``unmapped``
    (``"file: KEY = VALUE (why)"`` for every key that has no fabml setting or could not be read)."""

    config: SurrogateConfig
    unmapped: list[str] = field(default_factory=list)
    mapped: dict[str, str] = field(default_factory=dict)


def read_condition(path: Path) -> dict[str, str]:
    """``KEY -> VALUE`` of a condition.txt (see the module doc)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"legacy config {path} does not exist") from None
    except OSError as err:
        raise DataError(f"legacy config {path} is not readable ({err})") from None
    params: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("%") or line.startswith("'"):
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[0] not in IGNORED and (parts[0], parts[1]) not in TITLES:
            params[parts[0]] = parts[1]
        elif len(parts) == 1:
            params[parts[0]] = ""
    if not params:
        raise DataError(f"legacy config {path} holds no 'KEY VALUE' lines; is it the seed's condition.txt?")
    return params


def read_preset(path: Path) -> list[str]:
    """The non-empty lines of a preset.txt after its header: data_No, init_beta_divisor, encoder
    filters, conditioner filters (and anything after)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    except FileNotFoundError:
        raise DataError(f"legacy preset {path} does not exist") from None
    except OSError as err:
        raise DataError(f"legacy preset {path} is not readable ({err})") from None
    body = [ln for ln in lines[1:] if ln]
    if len(body) < 4:
        raise DataError(
            f"legacy preset {path} has {len(body)} value line(s) after its header; expected 4: data_No, "
            "init_beta_divisor, encoder filters, conditioner filters"
        )
    return body


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    target = cfg
    for part in parents:
        target = getattr(target, part)
    setattr(target, name, value)


def _number(text: str, kind: Callable[[str], Any]) -> Any:
    if kind is int:
        value = float(text)
        if value != int(value):
            raise ValueError(f"{text} is not an integer")
        return int(value)
    return kind(text)


def _show(value: Any) -> str:
    """``repr`` of a setting's value; a long list as ``[first, second, ..., last] (n values)``."""
    if isinstance(value, list) and len(value) > 6:
        return f"[{value[0]}, {value[1]}, ..., {value[-1]}] ({len(value)} values)"
    return repr(value)


class _Importer:
    def __init__(self, condition: Path, preset: Path | None) -> None:
        self.cfg = SurrogateConfig()
        self.mapped: dict[str, str] = {}
        self.unmapped: list[str] = []
        self.condition_name = Path(condition).name
        self.preset_name = Path(preset).name if preset is not None else "preset.txt"
        self.params = read_condition(Path(condition))
        self.used: set[str] = set()

    # ----------------------------------------------------------------- helpers

    def skip(self, key: str, value: str, why: str, where: str | None = None) -> None:
        self.unmapped.append(f"{where or self.condition_name}: {key} = {value} ({why})")

    def get(self, key: str, kind: Callable[[str], Any]) -> Any:
        """The value of ``key`` as ``kind``; None (and an unmapped entry) when absent or unreadable."""
        if key not in self.params:
            return None
        self.used.add(key)
        text = self.params[key]
        try:
            return _number(text, kind) if kind in (int, float) else kind(text)
        except (ValueError, OverflowError):
            self.skip(key, text or "(no value)", f"not a {'number' if kind is float else 'whole number'}")
            return None

    def put(self, key: str, *settings: tuple[str, Any], note: str = "") -> None:
        for dotted, value in settings:
            _set(self.cfg, dotted, value)
        text = "; ".join(f"{dotted} = {_show(value)}" for dotted, value in settings)
        self.mapped[key] = text + (f" ({note})" if note else "")

    # ----------------------------------------------------------------- sections

    def dimensions(self) -> None:
        dims = [self.get(k, int) for k in ("Dim1", "Dim2", "Dim3", "num_var")]
        for k, (key, value) in enumerate(zip(("Dim1", "Dim2", "Dim3", "num_var"), dims)):
            if value is not None:
                self.mapped[key] = f"data.expected_shape[{k}] = {value}"
        if any(d is not None for d in dims):
            self.cfg.data.expected_shape = [int(d) if d is not None and d > 0 else 0 for d in dims]
        n_time, n_node = dims[1], dims[2]
        red = self.get("Dim2_red", int)
        if red is not None:
            if n_time is not None and 0 < red < n_time:
                self.put("Dim2_red", ("data.time_indices", list(range(red))), note=f"the first {red} of {n_time} steps")
            elif n_time is not None and red == n_time:
                self.mapped["Dim2_red"] = f"(= Dim2 {n_time}: no time sub-sampling)"
            else:
                self.skip("Dim2_red", str(red), f"must lie in 1..Dim2 ({n_time})")
        start = self.get("Dim3_start", int)
        end = self.get("Dim3_end", int)
        red3 = self.get("Dim3_red", int)
        if red3 is not None and start is None and end is None:
            start, end = 0, red3
        if start is not None or end is not None:
            lo = start or 0
            hi = end if end is not None else n_node
            keys = [k for k in ("Dim3_start", "Dim3_end", "Dim3_red") if k in self.params]
            if hi is None or not 0 <= lo < hi or (n_node is not None and hi > n_node):
                for key in keys:
                    self.skip(key, self.params[key], f"node window {lo}..{hi} does not fit Dim3 ({n_node})")
            elif lo == 0 and hi == n_node:
                for key in keys:
                    self.mapped[key] = f"(nodes 0..{hi}: all of Dim3, no node sub-sampling)"
            else:
                for key in keys:
                    self.put(key, ("data.node_indices", list(range(lo, hi))), note=f"nodes {lo}..{hi - 1}")

    def vae(self) -> None:
        for key, dotted, kind in (
            ("Training_epochs", "train_vae.epochs", int),
            ("Batch_size", "train_vae.batch_size", int),
            ("LearningR", "train_vae.lr", float),
            ("Latent_dim", "vae.latent_dim", int),
            ("Latent_dim_end", "vae.latent_dim_end", int),
        ):
            value = self.get(key, kind)
            if value is not None:
                self.put(key, (dotted, value))
        loss = self.get("Loss_type", int)
        if loss is not None:
            if loss in LOSS_TYPES:
                self.put("Loss_type", ("vae.recon_loss", LOSS_TYPES[loss]))
            else:
                self.skip("Loss_type", str(loss), "unknown code; the seed knows 1 MSE, 2 MAE, 3 SmoothL1, 4 Huber")
        alpha = self.get("alpha", float)
        if alpha is not None:
            if alpha > 0:
                self.put("alpha", ("vae.alpha", 1.0 / alpha),
                         note="1/alpha: the seed scales the reconstruction term, fabml the KL term")
            else:
                self.skip("alpha", str(alpha), "must be positive")

    def conditioner(self) -> None:
        e2e = self.get("use_e2e_training", int)
        with_e2e = e2e == 1
        for key, name, kind in (
            ("n_epoch", "epochs", int),
            ("latent_conditioner_lr", "lr", float),
            ("latent_conditioner_batch", "batch_size", int),
            ("latent_conditioner_weight_decay", "weight_decay", float),
        ):
            value = self.get(key, kind)
            if value is not None:
                sections = ["train_conditioner"] + (["train_e2e"] if with_e2e else [])
                self.put(key, *((f"{s}.{name}", value) for s in sections))
        dropout = self.get("latent_conditioner_dropout_rate", float)
        if dropout is not None:
            if 0.0 <= dropout < 1.0:
                self.put("latent_conditioner_dropout_rate", ("conditioner.dropout", dropout))
            else:
                self.skip("latent_conditioner_dropout_rate", str(dropout), "must lie in [0, 1)")
        kind = self.get("input_type", str)
        if kind is not None:
            if kind.lower() in INPUT_TYPES:
                self.put("input_type", ("conditioner.kind", INPUT_TYPES[kind.lower()]))
            else:
                self.skip("input_type", kind, "unknown; the seed knows image, image_vit, csv")
        folder = self.get("param_dir", str)
        if folder:
            image = (kind or "image").lower().startswith("image")
            where = folder.lstrip("/\\") if image else folder
            self.put("param_dir", ("data.inputs", where),
                     note="relative to the folder the seed ran in" if image and where != folder else "")
        if e2e is not None:
            if e2e == 1:
                self.put("use_e2e_training", ("mode", "all"), note="VAE, then conditioner, then e2e fine-tuning")
            else:
                self.skip("use_e2e_training", str(e2e),
                          "fabml's mode all ends with e2e; run train --mode vae, then --mode conditioner, to skip it")
        loss = self.get("e2e_loss_function", str)
        if loss is not None:
            if loss.lower() in E2E_LOSSES:
                self.put("e2e_loss_function", ("e2e.loss", E2E_LOSSES[loss.lower()]))
            else:
                self.skip("e2e_loss_function", loss, "unknown; use MSE, MAE, Huber or SmoothL1")
        use_reg = self.get("use_latent_regularization", int)
        weight = self.get("latent_reg_weight", float)
        lc_alpha = self.get("LC_alpha", float)
        if use_reg is not None or weight is not None:
            keys = [k for k in ("use_latent_regularization", "latent_reg_weight", "LC_alpha") if k in self.params]
            if use_reg == 0:
                value, note = 0.0, "regularisation off"
            elif lc_alpha is not None and lc_alpha <= 0:
                for key in keys:
                    self.skip(key, self.params[key], f"LC_alpha = {lc_alpha} must be positive to map the weight")
                return
            else:
                base = weight if weight is not None else self.cfg.e2e.latent_reg_weight
                value = base / (lc_alpha if lc_alpha is not None else 1.0)
                note = "latent_reg_weight / LC_alpha" if lc_alpha is not None else "latent_reg_weight"
            for key in keys:
                self.put(key, ("e2e.latent_reg_weight", value), note=note)
        elif lc_alpha is not None:
            self.skip("LC_alpha", str(lc_alpha), "only scales the e2e loss beside latent_reg_weight, which is not set")

    def rest(self) -> None:
        for key, value in self.params.items():
            if key in self.used or key in self.mapped:
                continue
            self.used.add(key)
            self.skip(key, value or "(no value)", NO_COUNTERPART.get(key, "no fabml setting"))

    def preset(self, path: Path) -> None:
        lines = read_preset(path)
        where = self.preset_name

        def ints(text: str) -> list[int] | None:
            try:
                return [_number(t, int) for t in text.replace(",", " ").split()]
            except ValueError:
                return None

        data_no = ints(lines[0])
        if data_no and len(data_no) == 1:
            self.put(f"{where}:data_No", ("data.fields", f"dataset{data_no[0]}.pickle"),
                     note="the seed's pickle: train it with --allow-pickle, or convert it to .npy")
        else:
            self.skip("data_No", lines[0], "not a whole number", where)
        divisor = ints(lines[1])
        if divisor and len(divisor) == 1 and 0 <= divisor[0] <= 12:
            self.put(f"{where}:init_beta_divisor", ("vae.init_beta_divisor", float(10 ** divisor[0])),
                     note=f"first KL weight 10**-{divisor[0]}" + (": no warm-up" if divisor[0] == 0 else ""))
        else:
            self.skip("init_beta_divisor", lines[1], "expected a whole number 0..12 (an exponent of 10)", where)
        filters = ints(lines[2])
        if filters and all(f > 0 for f in filters):
            if filters == SMALL_FILTERS:
                self.put(f"{where}:num_filter_enc", ("vae.preset", "small"), ("vae.filters", []))
            else:
                self.put(f"{where}:num_filter_enc", ("vae.filters", filters))
        else:
            self.skip("num_filter_enc", lines[2], "expected positive whole numbers", where)
        lc_filters = ints(lines[3])
        if lc_filters and all(f > 0 for f in lc_filters):
            width = lc_filters[0] if self.cfg.conditioner.kind == "cnn" else max(lc_filters)
            self.put(f"{where}:latent_conditioner_filter", ("conditioner.hidden", int(width)),
                     ("conditioner.blocks", len(lc_filters)), note="approximate: the architectures differ")
        else:
            self.skip("latent_conditioner_filter", lines[3], "expected positive whole numbers", where)
        for extra in lines[4:]:
            self.skip("(extra line)", extra, "preset.txt has four value lines", where)


def import_legacy(condition_txt: str | Path, preset_txt: str | Path | None = None) -> LegacyImport:
    """The seed's ``condition.txt`` (and ``preset.txt``) as a :class:`SurrogateConfig` plus the
    mapped and unmapped keys (see the module doc). A missing or empty file is a DataError."""
    importer = _Importer(Path(condition_txt), Path(preset_txt) if preset_txt is not None else None)
    importer.dimensions()
    importer.vae()
    importer.conditioner()
    importer.rest()
    if preset_txt is not None:
        importer.preset(Path(preset_txt))
    return LegacyImport(config=importer.cfg, unmapped=importer.unmapped, mapped=importer.mapped)
