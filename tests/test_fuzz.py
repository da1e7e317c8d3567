"""Fuzzing the parsers with hypothesis: list files, feature files, configs and the
estimator's inputs. Whatever is thrown at them, the answer is a parsed value or a
LortError (one clear line) -- never another exception, never a hang."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lort.config import RunConfig, load_config, parse_override
from lort.data.features import FeatureSet, load_features
from lort.data.readers import read_list_file
from lort.errors import LortError
from lort.estimator import LogitsRetargetingClassifier

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="lort-fuzz-"))


def _one_line_error(exc: LortError) -> None:
    text = str(exc)
    assert text and "\n" not in text.strip(), text


# ----------------------------------------------------------------------------- list files

ROOT = _scratch()
for name in ("a.jpg", "b c.jpg", "d/e.jpg"):
    (ROOT / name).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / name).write_bytes(b"x")

good_line = st.tuples(st.sampled_from(["a.jpg", "b c.jpg", "d/e.jpg", "missing.jpg", "../a.jpg"]),
                      st.integers(-3, 12)).map(lambda t: f"{t[0]} {t[1]}")  # fmt: skip
any_line = st.one_of(good_line, st.text(max_size=40), st.just(""), st.just("   "), st.just("a.jpg 1.5"))


@FUZZ
@given(lines=st.lists(any_line, max_size=12), num_classes=st.one_of(st.none(), st.integers(1, 10)),
       check=st.booleans(), newline=st.sampled_from(["\n", "\r\n"]))  # fmt: skip
def test_list_file_parser_never_crashes(lines, num_classes, check, newline):
    path = ROOT / "list.txt"
    path.write_text(newline.join(lines), encoding="utf-8", errors="surrogatepass") if False else path.write_bytes(
        newline.join(lines).encode("utf-8", errors="surrogatepass")
    )
    try:
        split = read_list_file(path, ROOT, num_classes, check)
    except LortError as exc:
        _one_line_error(exc)
        return
    assert len(split.paths) == len(split.labels) > 0
    assert (split.labels >= 0).all() and (num_classes is None or (split.labels < num_classes).all())
    if check:
        assert all(Path(p).is_file() for p in split.paths)


@FUZZ
@given(data=st.binary(max_size=200))
def test_list_file_of_random_bytes(data):
    path = ROOT / "bytes.txt"
    path.write_bytes(data)
    try:
        read_list_file(path, ROOT, 5)
    except LortError as exc:
        _one_line_error(exc)


# ----------------------------------------------------------------------------- feature files

dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_, np.float16])
arrays = hnp.arrays(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                    elements=None)  # fmt: skip
keys = st.sampled_from(["train_features", "train_labels", "val_features", "val_labels", "test_features",
                        "test_labels", "init_weight", "init_bias", "classes", "other"])  # fmt: skip


@FUZZ
@given(content=st.dictionaries(keys, arrays, max_size=8))
def test_feature_file_loader_never_crashes(content):
    path = ROOT / "feats.npz"
    with open(path, "wb") as f:
        np.savez(f, **content)
    try:
        fs = load_features(path)
    except LortError as exc:
        _one_line_error(exc)
        return
    assert isinstance(fs, FeatureSet) and fs.splits["train"][0].ndim == 2
    assert np.isfinite(fs.splits["train"][0]).all()


@FUZZ
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY"]))
def test_feature_file_of_random_bytes(data, prefix):
    path = ROOT / "junk.npz"
    path.write_bytes(prefix + data)
    try:
        fs = load_features(path)
    except LortError as exc:
        _one_line_error(exc)
        return
    # bytes that happen to load must give a valid feature set
    assert isinstance(fs, FeatureSet) and fs.splits["train"][0].ndim == 2
    assert np.isfinite(fs.splits["train"][0]).all()


def test_a_truncated_valid_feature_file_is_refused():
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, train_features=rng.normal(size=(6, 3)), train_labels=np.array([0, 0, 1, 1, 2, 2]),
             test_features=rng.normal(size=(3, 3)), test_labels=np.array([0, 1, 2]))  # fmt: skip
    data = buf.getvalue()
    for cut in range(0, len(data), max(1, len(data) // 25)):
        (ROOT / "cut.npz").write_bytes(data[:cut])
        try:
            load_features(ROOT / "cut.npz")
        except LortError as exc:
            _one_line_error(exc)


# ----------------------------------------------------------------------------- configs

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.lists(st.integers(-2, 3), max_size=3))  # fmt: skip
section_keys = st.sampled_from(["dataset", "imbalance_ratio", "max_per_class", "model", "epochs", "lr", "weight_decay",
                                "batch_size", "methods", "lrs", "smooth", "seed", "profile", "amp", "views", "bogus"])  # fmt: skip
sections = st.dictionaries(st.sampled_from(["data", "stage1", "stage2", "extra"]),
                           st.one_of(scalars, st.dictionaries(section_keys, scalars, max_size=5)), max_size=4)  # fmt: skip


@FUZZ
@given(tree=st.one_of(sections, scalars))
def test_config_loader_never_crashes(tree):
    path = ROOT / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        cfg = load_config(path)
    except LortError as exc:
        _one_line_error(exc)
        return
    assert isinstance(cfg, RunConfig)


@FUZZ
@given(text=st.text(max_size=120))
def test_config_text_and_overrides_never_crash(text):
    path = ROOT / "cfg_text.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if False else path.write_bytes(
        text.encode("utf-8", errors="surrogatepass")
    )
    for attempt in (lambda: load_config(path), lambda: load_config(None, [text]), lambda: parse_override(text)):
        try:
            attempt()
        except LortError as exc:
            _one_line_error(exc)


# ----------------------------------------------------------------------------- estimator input


@FUZZ
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)),
       labels=st.lists(st.one_of(st.integers(0, 3), st.sampled_from(["a", "b"])), max_size=8))  # fmt: skip
def test_estimator_input_gives_a_value_error_or_a_fit(x, labels):
    try:
        clf = LogitsRetargetingClassifier(epochs=1).fit(x, np.asarray(labels, dtype=object))
    except ValueError as exc:  # the estimator's contract: bad input is a ValueError
        assert str(exc)
        return
    assert clf.predict(x).shape == (len(x),)
