"""FCS/CSV input-output and cytometry preprocessing (scprob.data.fcs, scprob.data.cytometry)."""

import json
import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scprob
from scprob.data import cytometry as cy
from scprob.data.fcs import read_fcs, write_fcs
from scprob.data.validate import DataError


def make_flow(n=300, seed=0):
    """Raw-looking flow data: a scatter channel without a marker name, three fluorescence
    channels (one marker name repeated), spillover between FL1 and FL2, two obs columns."""
    rng = np.random.default_rng(seed)
    X = rng.lognormal(6, 1.2, (n, 4)).astype(np.float32)
    X[:, 1:] -= 200  # fluorescence goes negative after background subtraction
    var = pd.DataFrame(
        {"channel": ["FSC-A", "FL1-A", "FL2-A", "FL3-A"], "marker": ["", "CD3", "CD4", "CD8"]},
        index=["FSC-A", "CD3", "CD4", "CD8"],
    )
    a = ad.AnnData(X, var=var)
    a.obs_names = [str(i) for i in range(n)]
    a.obs["cell_type"] = pd.Categorical(rng.choice(["T cell", "B/$cell", None], n))
    a.obs["score"] = rng.normal(size=n).astype(np.float32)
    a.uns["fcs"] = {
        "spillover": {"channels": ["FL1-A", "FL2-A"], "matrix": [[1.0, 0.12], [0.03, 1.0]]},
        "text": {"$CYT": "TestCytometer", "$DATE": "01-JAN-2024", "$P1N": "stale"},
    }
    return a


def raw_fcs(path, pairs, data: bytes, version=b"FCS3.0", delim="/"):
    """Hand-made FCS file: header, TEXT from ``pairs`` (with $BEGINDATA/$ENDDATA filled in),
    DATA bytes.  Independent of write_fcs, to test read_fcs on datatypes it does not write."""
    text_start = 58
    begin = 0
    for _ in range(5):
        full = list(pairs) + [("$BEGINDATA", str(begin)), ("$ENDDATA", str(begin + len(data) - 1))]
        text = (delim + "".join(f"{k}{delim}{v}{delim}" for k, v in full)).encode()
        begin = text_start + len(text)
    end = begin + len(data) - 1
    header = version + b"    " + b"".join(f"{v:>8d}".encode() for v in (text_start, begin - 1, begin, end, 0, 0))
    with open(path, "wb") as fh:
        fh.write(header + text + data)
    return path


# --------------------------------------------------------------------------- FCS


@pytest.mark.parametrize("endianness", ["little", "big"])
def test_fcs_round_trip(tmp_path, endianness):
    a = make_flow()
    path = write_fcs(a, tmp_path / "a.fcs", obs_columns=["cell_type", "score"], endianness=endianness)
    assert os.listdir(tmp_path) == ["a.fcs"]  # no temporary file left behind
    b = read_fcs(path)
    assert b.X.dtype == np.float32 and isinstance(b.X, np.ndarray)
    np.testing.assert_array_equal(b.X, a.X)
    assert list(b.var_names) == ["FSC-A", "CD3", "CD4", "CD8"]  # $PnS where set, else $PnN
    assert list(b.var["channel"]) == ["FSC-A", "FL1-A", "FL2-A", "FL3-A"]
    assert list(b.var["marker"]) == ["", "CD3", "CD4", "CD8"]
    assert list(b.obs_names) == [str(i) for i in range(a.n_obs)]
    # obs columns come back from their channels and codes
    assert list(b.obs["cell_type"].astype(object).fillna("NA")) == list(a.obs["cell_type"].astype(object).fillna("NA"))
    np.testing.assert_array_equal(b.obs["score"].to_numpy(), a.obs["score"].to_numpy())
    fcs = b.uns["fcs"]
    assert fcs["spillover"] == a.uns["fcs"]["spillover"]
    assert fcs["path"] == "a.fcs"
    text = fcs["text"]
    assert text["$BYTEORD"] == ("1,2,3,4" if endianness == "little" else "4,3,2,1")
    assert text["$DATATYPE"] == "F" and text["$PAR"] == "6"
    assert text["$P2N"] == "FL1-A" and text["$P2S"] == "CD3" and "$P1S" not in text
    assert text["$CYT"] == "TestCytometer" and text["$P1N"] == "FSC-A"  # other keywords kept, stale Pn* replaced
    assert json.loads(text["SCPROB_CELL_TYPE_CODES"]) == {"1": "B/$cell", "2": "T cell"}
    json.dumps(fcs)  # JSON-serialisable
    # and again, from what was read
    c = read_fcs(write_fcs(b, tmp_path / "b.fcs", obs_columns=["cell_type"]))
    np.testing.assert_array_equal(c.X, a.X)
    assert list(c.var_names) == list(b.var_names)


def test_fcs_names_without_var_columns_and_duplicates(tmp_path):
    a = ad.AnnData(np.arange(12, dtype=np.float32).reshape(4, 3), var=pd.DataFrame(index=["CD3", "CD4", "Time"]))
    b = read_fcs(write_fcs(a, tmp_path / "a.fcs"))
    assert list(b.var_names) == ["CD3", "CD4", "Time"]
    assert list(b.var["channel"]) == ["CD3", "CD4", "Time"]
    # two channels with the same $PnS: unique names, with a warning
    a.var["channel"] = ["FL1", "FL2", "Time"]
    a.var["marker"] = ["CD3", "CD3", ""]
    with pytest.warns(UserWarning, match="repeated marker names"):
        c = read_fcs(write_fcs(a, tmp_path / "b.fcs"))
    assert list(c.var_names) == ["CD3", "CD3-1", "Time"]
    # $PnN must be unique
    a.var["channel"] = ["FL1", "FL1", "Time"]
    with pytest.raises(DataError, match="FL1"):
        write_fcs(a, tmp_path / "c.fcs")


def test_fcs_preprocessing_record_travels(tmp_path):
    a = make_flow()
    cy.asinh_transform(a, cofactor=150.0)
    b = read_fcs(write_fcs(a, tmp_path / "a.fcs"))
    assert b.uns["scprob_cytometry"] == a.uns["scprob_cytometry"]
    cy.inverse_transform(b)  # back to raw units, ready to be written as FCS again
    np.testing.assert_allclose(b.X, make_flow().X, rtol=1e-5, atol=1e-2)


def test_fcs_read_by_flowio(tmp_path):
    """Interoperability: another reader sees the same numbers in both byte orders."""
    flowio = pytest.importorskip("flowio")
    a = make_flow(n=50)
    for e in ("little", "big"):
        fd = flowio.FlowData(str(write_fcs(a, tmp_path / f"{e}.fcs", endianness=e)))
        assert fd.pnn_labels == ["FSC-A", "FL1-A", "FL2-A", "FL3-A"]
        np.testing.assert_array_equal(fd.as_array(preprocess=False).astype(np.float32), a.X)


def test_fcs_integer_datatype(tmp_path):
    # big-endian, 16 bits per value, $P1R = 1024 -> values are masked to 10 bits
    vals = np.array([[5, 1023], [1024 + 7, 300], [0xFFFF, 2]], dtype=">u2")
    pairs = [
        ("$BYTEORD", "4,3,2,1"),
        ("$DATATYPE", "I"),
        ("$MODE", "L"),
        ("$PAR", "2"),
        ("$TOT", "3"),
        ("$P1N", "FL1"),
        ("$P1B", "16"),
        ("$P1R", "1024"),
        ("$P1E", "0,0"),
        ("$P1S", "CD3"),
        ("$P2N", "FL2"),
        ("$P2B", "16"),
        ("$P2R", "65536"),
        ("$P2E", "0,0"),
        ("$NEXTDATA", "0"),
    ]
    b = read_fcs(raw_fcs(tmp_path / "i16.fcs", pairs, vals.tobytes()))
    np.testing.assert_array_equal(b.X, np.array([[5, 1023], [7, 300], [1023, 2]], dtype=np.float32))
    assert list(b.var_names) == ["CD3", "FL2"] and b.X.dtype == np.float32

    # little-endian, mixed bit widths 8/16/32, a log-amplified channel ($P2E = 4,1)
    rec = np.array([(200, 512, 70000), (3, 0, 1)], dtype=[("a", "u1"), ("b", "<u2"), ("c", "<u4")])
    pairs = [
        ("$BYTEORD", "1,2,3,4"),
        ("$DATATYPE", "I"),
        ("$MODE", "L"),
        ("$PAR", "3"),
        ("$TOT", "2"),
        ("$P1N", "A"),
        ("$P1B", "8"),
        ("$P1R", "256"),
        ("$P1E", "0,0"),
        ("$P2N", "B"),
        ("$P2B", "16"),
        ("$P2R", "1024"),
        ("$P2E", "4,1"),
        ("$P3N", "C"),
        ("$P3B", "32"),
        ("$P3R", "262144"),
        ("$P3E", "0,0"),
    ]
    c = read_fcs(raw_fcs(tmp_path / "mixed.fcs", pairs, rec.tobytes(), version=b"FCS3.1", delim="|"))
    np.testing.assert_allclose(c.X, np.array([[200, 100, 70000], [3, 1, 1]], dtype=np.float32), rtol=1e-6)


def test_fcs_double_big_endian_and_fcs2(tmp_path):
    vals = np.array([[1.5, -2.25], [1e10, 3.0]], dtype=">f8")
    pairs = [("$BYTEORD", "4,3,2,1"), ("$DATATYPE", "D"), ("$MODE", "L"), ("$PAR", "2"), ("$TOT", "2")]
    pairs += [("$P1N", "X"), ("$P1B", "64"), ("$P1R", "1"), ("$P2N", "Y"), ("$P2B", "64"), ("$P2R", "1")]
    b = read_fcs(raw_fcs(tmp_path / "d.fcs", pairs, vals.tobytes()))
    np.testing.assert_array_equal(b.X, vals.astype(np.float32))
    # FCS 2.0 without $TOT: the event count comes from the DATA segment size
    f = np.arange(6, dtype="<f4")
    pairs = [
        ("$BYTEORD", "1,2,3,4"),
        ("$DATATYPE", "F"),
        ("$MODE", "L"),
        ("$PAR", "3"),
        ("$P1B", "32"),
        ("$P2B", "32"),
        ("$P3B", "32"),
    ]
    pairs += [("$P1N", "a"), ("$P2N", "b"), ("$P3N", "c")]
    c = read_fcs(raw_fcs(tmp_path / "v2.fcs", pairs, f.tobytes(), version=b"FCS2.0"))
    np.testing.assert_array_equal(c.X, f.reshape(2, 3))


def test_fcs_spillover_with_channel_numbers(tmp_path):
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$MODE", "L"), ("$PAR", "2"), ("$TOT", "1")]
    pairs += [("$P1N", "FL1"), ("$P1B", "32"), ("$P2N", "FL2"), ("$P2B", "32"), ("SPILL", "2,1,2,1,0.5,0,1")]
    b = read_fcs(raw_fcs(tmp_path / "s.fcs", pairs, np.zeros(2, "<f4").tobytes()))
    assert b.uns["fcs"]["spillover"] == {"channels": ["FL1", "FL2"], "matrix": [[1.0, 0.5], [0.0, 1.0]]}


def test_fcs_empty_keyword_value(tmp_path):
    """Some writers leave a value empty ("/$P2S//"), against the standard: still readable."""
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$MODE", "L"), ("$PAR", "2"), ("$TOT", "1")]
    pairs += [("$P1N", "FL1"), ("$P1B", "32"), ("$P1S", "CD3"), ("$P2N", "FL2"), ("$P2B", "32"), ("$P2S", "")]
    with pytest.warns(UserWarning, match="empty keyword values"):
        b = read_fcs(raw_fcs(tmp_path / "e.fcs", pairs, np.array([1.0, 2.0], "<f4").tobytes()))
    assert list(b.var_names) == ["CD3", "FL2"]
    np.testing.assert_array_equal(b.X, [[1.0, 2.0]])


def test_fcs_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fcs"):
        read_fcs(tmp_path / "nope.fcs")

    good = write_fcs(make_flow(n=100), tmp_path / "good.fcs")
    raw = good.read_bytes()
    (tmp_path / "trunc.fcs").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(DataError, match=r"trunc\.fcs.*truncated"):
        read_fcs(tmp_path / "trunc.fcs")
    (tmp_path / "head.fcs").write_bytes(raw[:30])  # header cut short
    with pytest.raises(DataError, match=r"head\.fcs"):
        read_fcs(tmp_path / "head.fcs")
    (tmp_path / "textcut.fcs").write_bytes(raw[:300])  # TEXT segment cut short
    with pytest.raises(DataError, match=r"textcut\.fcs.*TEXT"):
        read_fcs(tmp_path / "textcut.fcs")
    (tmp_path / "garbage.fcs").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DataError, match=r"garbage\.fcs.*not an FCS file"):
        read_fcs(tmp_path / "garbage.fcs")
    # a valid header whose TEXT cannot be split into keyword/value pairs (odd field count)
    text = b"/$PAR/1/$TOT/"
    hdr = b"FCS3.0    " + b"".join(f"{v:>8d}".encode() for v in (58, 58 + len(text) - 1, 0, 0, 0, 0))
    (tmp_path / "odd.fcs").write_bytes(hdr + text)
    with pytest.raises(DataError, match=r"odd\.fcs.*TEXT segment cannot be parsed"):
        read_fcs(tmp_path / "odd.fcs")
    # header offsets that are not numbers
    (tmp_path / "hdr.fcs").write_bytes(b"FCS3.0    " + b"abcdefgh" * 6 + raw[58:])
    with pytest.raises(DataError, match=r"hdr\.fcs.*HEADER"):
        read_fcs(tmp_path / "hdr.fcs")
    # a missing required keyword
    miss = raw_fcs(tmp_path / "miss.fcs", [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$PAR", "1"), ("$TOT", "1")], b"\0" * 4)
    with pytest.raises(DataError, match=r"miss\.fcs.*\$P1N"):
        read_fcs(miss)


def test_write_fcs_is_atomic(tmp_path, monkeypatch):
    a = make_flow(n=20)
    path = write_fcs(a, tmp_path / "a.fcs")
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    b = a.copy()
    b.X = b.X * 2
    with pytest.raises(OSError, match="disk full"):
        write_fcs(b, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.fcs"]


# --------------------------------------------------------------------------- preprocessing


def test_compensation_hand_computed():
    # observed = true @ S  with  S = [[1, 0.1], [0, 1]]:  FL2 gets 10% of FL1
    a = ad.AnnData(np.array([[10.0, 5.0, 7.0], [2.0, 0.2, 1.0]], dtype=np.float32), var=pd.DataFrame(index=["CD3", "CD4", "FSC"]))
    a.var["channel"] = ["FL1", "FL2", "FSC-A"]
    spill = pd.DataFrame([[1.0, 0.1], [0.0, 1.0]], index=["FL1", "FL2"], columns=["FL1", "FL2"])
    cy.compensate(a, spill)
    np.testing.assert_allclose(a.X, [[10.0, 4.0, 7.0], [2.0, 0.0, 1.0]], atol=1e-6)
    assert a.uns["scprob_cytometry"]["compensated"] is True
    with pytest.raises(DataError, match="twice"):
        cy.compensate(a, spill)

    b = make_flow(n=10)  # spillover from uns["fcs"], matched by channel name
    raw = b.X.copy()
    cy.compensate(b)
    S = np.array([[1.0, 0.12], [0.03, 1.0]])
    np.testing.assert_allclose(b.X[:, 1:3], raw[:, 1:3] @ np.linalg.inv(S), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(b.X[:, [0, 3]], raw[:, [0, 3]])

    c = make_flow(n=10)
    with pytest.raises(DataError, match="FL9-A"):
        cy.compensate(c, {"channels": ["FL1-A", "FL9-A"], "matrix": [[1, 0], [0, 1]]})
    del c.uns["fcs"]["spillover"]
    with pytest.raises(DataError, match="spillover"):
        cy.compensate(c)


def test_asinh_and_inverse():
    a = make_flow(n=50)
    raw = a.X.copy()
    cy.asinh_transform(a, cofactor=150.0, markers=["CD3", "CD4", "CD8"])
    np.testing.assert_allclose(a.X[:, 1:], np.arcsinh(raw[:, 1:] / 150.0), rtol=1e-5)
    np.testing.assert_array_equal(a.X[:, 0], raw[:, 0])
    rec = a.uns["scprob_cytometry"]
    assert rec["transform"] == {"kind": "asinh", "cofactor": 150.0, "markers": ["CD3", "CD4", "CD8"]}
    with pytest.raises(DataError, match="already transformed"):
        cy.asinh_transform(a)
    with pytest.raises(DataError, match="CD99"):
        cy.asinh_transform(make_flow(n=5), markers=["CD99"])
    cy.inverse_transform(a)
    np.testing.assert_allclose(a.X, raw, rtol=1e-5, atol=1e-3)
    assert "transform" not in a.uns["scprob_cytometry"]


def test_logicle_properties_and_inverse():
    t, w, m = 262144.0, 0.5, 4.5
    x = np.concatenate([-np.logspace(3, 0, 20), [0.0], np.logspace(0, np.log10(t), 40)])
    y = cy.logicle(x, t=t, w=w, m=m)
    assert np.all(np.diff(y) > 0)  # monotone
    assert cy.logicle(0.0, t=t, w=w, m=m) == pytest.approx(w / m)  # zero sits at w/m of the display
    assert cy.logicle(t, t=t, w=w, m=m) == pytest.approx(1.0)  # top of scale
    assert cy.logicle(0.0, a=1.0) == pytest.approx((0.5 + 1.0) / (4.5 + 1.0))
    # near-symmetric about zero: logicle(-x) - l0 == -(logicle(x) - l0)
    l0 = w / m
    np.testing.assert_allclose(cy.logicle(-x[30:], t=t, w=w, m=m) - l0, -(y[30:] - l0), atol=1e-9)
    # large values: m decades over the display (one decade = 1/m)
    assert cy.logicle(t / 10, t=t, w=w, m=m) == pytest.approx(1 - 1 / m, abs=1e-3)
    np.testing.assert_allclose(cy.logicle_inverse(y, t=t, w=w, m=m), x, rtol=1e-9, atol=1e-9)
    with pytest.raises(DataError, match="w"):
        cy.logicle(x, w=3.0)

    a = make_flow(n=60)
    raw = a.X.copy()
    cy.logicle_transform(a, markers=["CD3", "CD4", "CD8"])
    assert a.uns["scprob_cytometry"]["transform"]["kind"] == "logicle"
    assert float(a.X[:, 1:].max()) < 1.5 and float(a.X[:, 1:].min()) > -0.5
    cy.inverse_transform(a)
    np.testing.assert_allclose(a.X, raw, rtol=1e-4, atol=1e-2)

    b = make_flow(n=10)
    b.X[3, 2] = np.nan
    with pytest.raises(DataError, match="cell '3', marker 'CD4'"):
        cy.logicle_transform(b)


def test_view_is_copied_not_parent():
    a = make_flow(n=20)
    raw = a.X.copy()
    v = a[:5]
    with pytest.warns(UserWarning, match="view"):
        cy.asinh_transform(v, cofactor=5.0)
    assert not v.is_view
    np.testing.assert_allclose(v.X, np.arcsinh(raw[:5] / 5.0), rtol=1e-6)
    np.testing.assert_array_equal(a.X, raw)  # the parent is untouched
    assert "scprob_cytometry" not in a.uns


def test_scale_and_unscale():
    a = make_flow(n=200)
    cy.asinh_transform(a, cofactor=150.0)
    before = a.X.copy()
    cy.scale(a, max_value=None)
    np.testing.assert_allclose(a.X.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a.X.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(a.var["mean"], before.mean(0), rtol=1e-5)
    np.testing.assert_allclose(a.var["std"], before.std(0), rtol=1e-5)
    with pytest.raises(DataError, match="already scaled"):
        cy.scale(a)
    cy.unscale(a)
    np.testing.assert_allclose(a.X, before, rtol=1e-5, atol=1e-5)
    assert "mean" not in a.var.columns and "scale" not in a.uns["scprob_cytometry"]

    cy.scale(a, max_value=1.0)
    assert float(np.abs(a.X).max()) <= 1.0
    c = make_flow(n=20)
    c.X[:, 2] = 3.0
    with pytest.raises(DataError, match="CD4"):
        cy.scale(c)


def test_apply_preprocessing_reproduces(tmp_path):
    train = make_flow(n=300)
    raw = train.copy()
    cy.compensate(train)
    cy.asinh_transform(train, cofactor=150.0, markers=["CD3", "CD4", "CD8"])
    cy.scale(train, markers=["CD3", "CD4", "CD8"])
    record = train.uns["scprob_cytometry"]
    json.dumps(record)
    assert set(record) == {"compensated", "spillover", "transform", "scale"}

    new = raw.copy()
    cy.apply_preprocessing(new, record)
    np.testing.assert_array_equal(new.X, train.X)
    assert new.uns["scprob_cytometry"] == record

    # parameters are reused, not refitted: a subset gets exactly the same numbers
    part = raw[:40].copy()
    cy.apply_preprocessing(part, record)
    np.testing.assert_array_equal(part.X, train.X[:40])

    # the record survives an h5ad round trip of the training data
    train.write_h5ad(tmp_path / "train.h5ad")
    loaded = ad.read_h5ad(tmp_path / "train.h5ad").uns["scprob_cytometry"]
    again = raw.copy()
    cy.apply_preprocessing(again, loaded)
    np.testing.assert_array_equal(again.X, train.X)

    # markers matched by name: another column order works, a missing marker is named
    shuffled = raw[:, ["CD8", "FSC-A", "CD4", "CD3"]].copy()
    cy.apply_preprocessing(shuffled, record)
    np.testing.assert_allclose(shuffled[:, ["FSC-A", "CD3", "CD4", "CD8"]].X, train.X, rtol=1e-6)
    with pytest.raises(DataError, match="CD8"):
        cy.apply_preprocessing(raw[:, ["FSC-A", "CD3", "CD4"]].copy(), record)
    with pytest.raises(DataError, match="already preprocessed"):
        cy.apply_preprocessing(train, record)


def test_csv_round_trip(tmp_path):
    a = make_flow(n=30)
    path = cy.write_csv(a, tmp_path / "a.csv", obs_columns=["cell_type", "score"])
    b = cy.read_csv(path)
    np.testing.assert_array_equal(b.X[:, :4], a.X)
    np.testing.assert_array_equal(b.X[:, 4], a.obs["score"].to_numpy())
    assert list(b.var_names) == ["FSC-A", "CD3", "CD4", "CD8", "score"]  # numeric obs column -> marker
    assert list(b.obs.columns) == ["cell_type"]
    assert list(b.obs["cell_type"].astype(object).fillna("NA")) == list(a.obs["cell_type"].astype(object).fillna("NA"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        cy.read_csv(tmp_path / "empty.csv")
    (tmp_path / "text.csv").write_text("a,b\nx,y\n")
    with pytest.raises(DataError, match="no numeric column"):
        cy.read_csv(tmp_path / "text.csv")
    with pytest.raises(DataError, match="nope"):
        cy.write_csv(a, tmp_path / "x.csv", obs_columns=["nope"])


def test_check_preprocessed_and_finite():
    a = make_flow(n=500)
    msgs = cy.check_preprocessed(a.X, a.var_names)
    assert len(msgs) == 1 and "untransformed" in msgs[0] and "asinh_transform" in msgs[0] and "cofactor=150" in msgs[0]

    cy.asinh_transform(a, cofactor=150.0)
    msgs = cy.check_preprocessed(a.X, a.var_names)
    assert len(msgs) == 1 and "unscaled" in msgs[0] and "scale(adata)" in msgs[0]

    cy.scale(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cy.check_preprocessed(a.X, a.var_names) == []

    X = a.X.copy()
    X[7, 2] = np.inf
    with pytest.raises(DataError, match="cell '7', marker 'CD4'"):
        cy.check_finite(X, a.var_names, a.obs_names)
    assert any("NaN or Inf" in m for m in cy.check_preprocessed(X, a.var_names))
    cy.check_finite(a.X, a.var_names, a.obs_names)  # no error on clean data


def test_top_level_exports():
    assert scprob.read_fcs is read_fcs and scprob.write_fcs is write_fcs
