"""SEMI G85 XML wafer maps: writer/reader round trip, hand-written files in both layouts, BinCount, malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from fabml.data.g85 import read_g85, read_g85_maps, write_g85
from fabml.data.synthetic_wafer import generate_wafer_maps
from fabml.data.wafer_io import WaferMap, load_wafer_maps
from fabml.errors import ConfigError, DataError

HAND_WRITTEN = """<?xml version="1.0" encoding="utf-8"?>
<Maps xmlns="http://www.semi.org">
  <Map SubstrateType="Wafer" SubstrateId="S-77" FormatRevision="SEMI G85 0703">
    <Device ProductId="PX9" LotId="A1234" WaferId="A1234-07" Rows="4" Columns="5" NullBin="FF"
            BinType="HexaDecimal" OriginLocation="2" Orientation="180" CreateDate="2026011514302500">
      <ReferenceDevice ReferenceDeviceX="2" ReferenceDeviceY="0"/>
      <Bin BinCode="01" BinQuality="Pass" BinCount="10" BinDescription="good"/>
      <Bin BinCode="0A" BinQuality="pass" BinCount="1" BinDescription="good, slow"/>
      <Bin BinCode="EF" BinQuality="Fail" BinCount="2"/>
      <Bin BinCode="3C" BinQuality="Fail" BinCount="1"/>
      <Data MapName="Map" MapVersion="2">
        <Row><![CDATA[FF 01 01 01 FF]]></Row>
        <Row><![CDATA[01 EF 0A 3C 01]]></Row>
        <Row><![CDATA[01 01 EF 01 01]]></Row>
        <Row><![CDATA[FF FF 1 FF FF]]></Row>
      </Data>
    </Device>
  </Map>
</Maps>
"""

EXPECTED = np.array(
    [[0, 1, 1, 1, 0], [1, 2, 1, 2, 1], [1, 1, 2, 1, 1], [0, 0, 1, 0, 0]],
    dtype=np.uint8,
)


def _wafer() -> WaferMap:
    dies = generate_wafer_maps(1, seed=5, families=("Scratch",), grid_range=(20, 30))[0].dies
    return WaferMap(dies, {"id": "W-03", "lot": "LOT-9", "date": "2026-03-02", "label": "Scratch", "source": "x"})


@pytest.mark.parametrize(
    "codes",
    [
        {},  # HexaDecimal FF/01/EF, space separated, namespace
        {"bin_type": "Decimal", "null_bin": "255", "pass_bin": "001", "fail_bin": "002", "separator": ""},
        {"bin_type": "ASCII", "null_bin": ".", "pass_bin": "1", "fail_bin": "X", "separator": "", "namespace": False},
    ],
)
@pytest.mark.parametrize("data_wrapper", [True, False])
def test_round_trip(tmp_path, codes, data_wrapper, capsys):
    wafer = _wafer()
    path = write_g85(wafer, tmp_path / "w03.xml", data_wrapper=data_wrapper, **codes)
    assert ("<Data" in path.read_text()) == data_wrapper
    back = read_g85(path)
    assert back.dies.dtype == np.uint8 and np.array_equal(back.dies, wafer.dies)
    assert (back.meta["id"], back.meta["lot"], back.meta["date"]) == ("W-03", "LOT-9", "2026-03-02")
    assert back.meta["source"] == str(path) and back.label is None
    assert "BinCount" not in capsys.readouterr().err  # the writer's counts agree with its data


def test_hand_written_file_with_namespace_and_hex_bins(tmp_path, capsys):
    path = tmp_path / "tester.xml"
    path.write_text(HAND_WRITTEN)
    wafer = read_g85(path)
    assert capsys.readouterr().err == ""  # every BinCount agrees ("1" counts as bin 01)
    assert np.array_equal(wafer.dies, EXPECTED)  # "1" equals "01" as hexadecimal; "pass" is case-insensitive
    assert wafer.meta["id"] == "A1234-07" and wafer.meta["lot"] == "A1234"
    assert wafer.meta["date"] == "2026-01-15T14:30:25" and wafer.meta["product"] == "PX9"
    loaded = load_wafer_maps(tmp_path)
    assert len(loaded) == 1 and np.array_equal(loaded[0].dies, EXPECTED)


def test_fixed_width_rows_and_several_maps_in_one_file(tmp_path):
    rows = "".join(f"<Row>{r}</Row>" for r in ("FF0101", "01EF01"))
    device = (
        '<Device WaferId="{}" NullBin="FF" BinType="HexaDecimal" Rows="2" Columns="3">'
        '<Bin BinCode="01" BinQuality="Pass"/><Data>' + rows + "</Data></Device>"
    )
    text = "<Maps>" + "".join(f"<Map>{device.format(w)}</Map>" for w in ("w1", "w2")) + "</Maps>"
    path = tmp_path / "two.xml"
    path.write_text(text)
    maps = read_g85_maps(path)
    assert [m.meta["id"] for m in maps] == ["w1", "w2"]
    assert np.array_equal(maps[1].dies, np.array([[0, 1, 1], [1, 2, 1]], dtype=np.uint8))
    with pytest.raises(DataError, match=r"two\.xml: holds 2 wafer maps"):
        read_g85(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<Map><Device NullBin='FF'", "not a readable XML file"),
        ("<Wafer/>", "no <Map><Device> element found"),
        (HAND_WRITTEN.replace('Rows="4"', 'Rows="5"'), "Rows=5 but the map has 4 <Row> elements"),
        (HAND_WRITTEN.replace('Columns="5"', 'Columns="6"'), "Columns=6 but the rows hold 5 dies"),
        (HAND_WRITTEN.replace("01 EF 0A 3C 01", "01 EF 0A 3C"), "rows have inconsistent numbers of dies"),
        (HAND_WRITTEN.replace("FF FF 1 FF FF", "FF FF ZZ FF FF"), "bin code 'ZZ' is not a valid HexaDecimal"),
        (HAND_WRITTEN.replace('BinQuality="Pass"', 'BinQuality="Fail"').replace('"pass"', '"Fail"'), "no <Bin"),
        (HAND_WRITTEN.replace('"HexaDecimal"', '"Integer2"'), "BinType 'Integer2' is not supported"),
        ("<Map><Device NullBin='FF'><Bin BinCode='01' BinQuality='Pass'/></Device></Map>", "no <Data><Row> or <Row>"),
        (
            "<Map><Device NullBin='FF'><Bin BinCode='01' BinQuality='Pass'/><Row>01</Row>"
            "<Data><Row>01</Row></Data></Device></Map>",
            "holds both <Data><Row> and bare <Row>",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><Map>&b;</Map>',
            "not a readable XML file",
        ),
    ],
)
def test_malformed_files_raise_data_error_naming_the_file(tmp_path, text, fragment):
    path = tmp_path / "bad_map.xml"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_g85(path)
    message = str(err.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_writer_rejects_unusable_codes(tmp_path):
    with pytest.raises(ConfigError, match="three different"):
        write_g85(_wafer(), tmp_path / "x.xml", pass_bin="FF")
    with pytest.raises(ConfigError, match="same width"):
        write_g85(_wafer(), tmp_path / "x.xml", bin_type="Decimal", null_bin="255", pass_bin="1", fail_bin="2",
                  separator="")
    with pytest.raises(ConfigError, match="bin_type"):
        write_g85(_wafer(), tmp_path / "x.xml", bin_type="Octal")


# The second layout tools write: <Row> directly under <Device>, no <Data> wrapper, no namespace.
BARE_ROWS = """<?xml version="1.0" encoding="UTF-8"?>
<Map SubstrateType="Wafer" SubstrateId="Example">
  <Device BinType="Decimal" OriginLocation="0" Orientation="0" Rows="4" Columns="5" NullBin="255" LotId="L-5">
    <Bin BinCode="000" BinCount="{pass_count}" BinQuality="Pass" BinDescription="good"/>
    <Bin BinCode="001" BinCount="2" BinQuality="Fail"/>
    <Bin BinCode="002" BinQuality="Fail"/>
    <Row><![CDATA[255 000 000 000 255]]></Row>
    <Row><![CDATA[000 001 000 002 000]]></Row>
    <Row><![CDATA[000 000 001 000 000]]></Row>
    <Row><![CDATA[255 255 0 255 255]]></Row>
  </Device>
</Map>
"""


def test_rows_directly_under_device_without_namespace(tmp_path, capsys):
    path = tmp_path / "bare.xml"
    path.write_text(BARE_ROWS.format(pass_count=11))
    wafer = read_g85(path)
    assert np.array_equal(wafer.dies, EXPECTED)  # "0" equals "000" as decimal
    assert wafer.meta["id"] == "Example" and wafer.meta["lot"] == "L-5"
    assert capsys.readouterr().err == ""
    loaded = load_wafer_maps(tmp_path)
    assert len(loaded) == 1 and np.array_equal(loaded[0].dies, EXPECTED)


def test_namespace_on_some_tags_only(tmp_path):
    """A namespaced <Map> whose <Row> children carry no namespace, and the reverse, read the same."""
    ns = 'xmlns:s="http://www.semi.org"'
    bare = BARE_ROWS.format(pass_count=11).replace('<?xml version="1.0" encoding="UTF-8"?>\n', "")
    mixed_rows = bare.replace("<Map ", f"<s:Map {ns} ").replace("</Map>", "</s:Map>")
    mixed_rows = mixed_rows.replace("<Device ", "<s:Device ").replace("</Device>", "</s:Device>")
    mixed_data = HAND_WRITTEN.replace("<Data ", '<Data xmlns="" ')  # <Data> and its <Row>s leave the namespace
    for name, text in (("mixed_rows.xml", mixed_rows), ("mixed_data.xml", mixed_data)):
        path = tmp_path / name
        path.write_text(text)
        assert np.array_equal(read_g85(path).dies, EXPECTED), name


def test_bin_count_mismatch_is_a_warning_naming_file_bin_and_counts(tmp_path, capsys):
    path = tmp_path / "miscounted.xml"
    path.write_text(BARE_ROWS.format(pass_count=12))
    wafer = read_g85(path)  # still read
    assert np.array_equal(wafer.dies, EXPECTED)
    warning = capsys.readouterr().err
    assert str(path) in warning and "'000'" in warning and "BinCount=12" in warning and "holds 11 dies" in warning
    assert "'001'" not in warning  # bin 001 declares 2 and has 2; bin 002 declares none


def test_bin_count_mismatch_in_the_data_wrapper_layout(tmp_path, capsys):
    path = tmp_path / "miscounted_ns.xml"
    path.write_text(HAND_WRITTEN.replace('BinQuality="Fail" BinCount="2"', 'BinQuality="Fail" BinCount="5"'))
    assert np.array_equal(read_g85(path).dies, EXPECTED)
    warning = capsys.readouterr().err
    assert str(path) in warning and "'EF'" in warning and "BinCount=5" in warning and "holds 2 dies" in warning
    assert "'01'" not in warning and "'3C'" not in warning
