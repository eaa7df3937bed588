"""SEMI G85 XML wafer maps (the format testers write): a small reader on defusedxml, and a writer.

The layout read, with or without the ``http://www.semi.org`` namespace::

    <Maps>?  <Map SubstrateId=..>
      <Device LotId=.. WaferId=.. Rows=.. Columns=.. NullBin="FF" BinType="HexaDecimal" CreateDate=..>
        <ReferenceDevice .. />?
        <Bin BinCode="01" BinQuality="Pass" BinCount=".."/>  <Bin BinCode="EF" BinQuality="Fail" .. />
        <Data MapName="Map"><Row><![CDATA[FF 01 EF ..]]></Row> ..</Data>
      </Device>
    </Map>  </Maps>?

or the second layout tools write, ``<Row>`` elements directly under ``<Device>`` with no ``<Data>``
wrapper (``<Device ..><Bin ../><Row>FF 01 EF ..</Row> ..</Device>``). Namespaced and plain tags may
be mixed in one file. A file holding both layouts in one ``<Device>`` is refused as ambiguous.

``BinCount`` (per ``<Bin>``, where the file gives it) is checked against the dies of that code in the
map; a mismatch is a warning on stderr naming the file, the bin and both counts, not an error.

Dies are coded NullBin -> 0 (no die), a bin whose BinQuality is "Pass" -> 1, any other code -> 2.
Row tokens are space-separated, or fixed-width (width = len(NullBin)) when a row has no spaces.
Orientation and OriginLocation are not applied: the wafer job is invariant to rotations and flips.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Sequence
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import quoteattr

import numpy as np
from defusedxml import ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException

from fabml.console import err
from fabml.data.wafer_io import WaferMap, _one_line, to_iso_date
from fabml.errors import ConfigError, DataError

SEMI_NAMESPACE = "http://www.semi.org"
BIN_TYPES = ("ASCII", "Decimal", "HexaDecimal")
_BIN_TYPE_BY_LOWER = {name.lower(): name for name in BIN_TYPES}


def _local(tag: Any) -> str:
    """Tag name without its ``{namespace}``; comments and processing instructions give ''."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(elem: Element, name: str) -> list[Element]:
    return [child for child in elem if _local(child.tag) == name]


def _attr(scope: Sequence[Element], name: str) -> str | None:
    """First non-empty attribute ``name`` on the elements of ``scope`` (Device before Map)."""
    for elem in scope:
        value = elem.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _code_key(token: str, bin_type: str, source: str) -> int | str:
    """Comparable value of a bin code: 01 == 1 for Decimal/HexaDecimal, exact text for ASCII."""
    try:
        if bin_type == "Decimal":
            return int(token, 10)
        if bin_type == "HexaDecimal":
            return int(token, 16)
    except ValueError as exc:
        raise DataError(f"{source}: bin code {token!r} is not a valid {bin_type} value") from exc
    return token


def _row_tokens(text: str, width: int, source: str, row_no: int) -> list[str]:
    stripped = text.strip()
    if any(ch.isspace() for ch in stripped):
        return stripped.split()
    if len(stripped) % width:
        raise DataError(
            f"{source}: row {row_no} has {len(stripped)} characters, not a multiple of the bin width {width} "
            "(the length of NullBin)"
        )
    return [stripped[i : i + width] for i in range(0, len(stripped), width)]


def _g85_date(raw: str | None, source: str) -> str | None:
    """G85 CreateDate (YYYYMMDDhhmmss[cc], or any ISO text) -> ISO string; ``None`` if unreadable."""
    if raw is None:
        return None
    digits = raw.strip()
    try:
        if digits.isdigit() and len(digits) >= 14:
            stamp = dt.datetime.strptime(digits[:14], "%Y%m%d%H%M%S")
            return stamp.date().isoformat() if stamp.time() == dt.time() else stamp.isoformat()
        if digits.isdigit() and len(digits) == 8:
            return dt.datetime.strptime(digits, "%Y%m%d").date().isoformat()
        return to_iso_date(digits, source)
    except (ValueError, DataError):
        return None  # a cosmetic field: an unreadable date must not block loading the map


def _int_attr(scope: Sequence[Element], name: str, source: str) -> int | None:
    value = _attr(scope, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise DataError(f"{source}: {name}={value!r} is not an integer") from exc


def _map_rows(device: Element, source: str) -> list[Element]:
    """The <Row> elements of a <Device>: inside its first <Data> that holds rows, or directly under it.

    Raises :class:`DataError` when there are none, or when both layouts appear in the same <Device>.
    """
    wrapped = next((rows for data in _children(device, "Data") if (rows := _children(data, "Row"))), [])
    direct = _children(device, "Row")
    if wrapped and direct:
        raise DataError(
            f"{source}: <Device> holds both <Data><Row> and bare <Row> elements ({len(wrapped)} and {len(direct)}); "
            "keep one layout per <Device>"
        )
    if not (wrapped or direct):
        raise DataError(f"{source}: no <Data><Row> or <Row> wafer map data in <Device>")
    return wrapped or direct


def _bin_count_mismatches(
    bins: Sequence[Element],
    token_keys: Sequence[int | str],
    token_counts: Sequence[int],
    bin_type: str,
    source: str,
) -> list[tuple[str, int, int]]:
    """``(BinCode, declared BinCount, dies found)`` for every <Bin> whose BinCount disagrees with the map.

    ``token_keys[i]`` is the comparable code (see :func:`_code_key`) of a distinct token of the map and
    ``token_counts[i]`` how many dies carry it (tokens "1" and "01" count together under a numeric BinType).
    A <Bin> without a BinCount, or with one that is not an integer, is not checked.
    """
    found: dict[int | str, int] = {}
    for key, count in zip(token_keys, token_counts):
        found[key] = found.get(key, 0) + int(count)
    mismatches = []
    for elem in bins:
        code = (elem.get("BinCode") or "").strip()
        raw = (elem.get("BinCount") or "").strip()
        if not code or not raw:
            continue
        try:
            declared = int(raw)
        except ValueError:
            continue
        actual = found.get(_code_key(code, bin_type, source), 0)
        if declared != actual:
            mismatches.append((code, declared, actual))
    return mismatches


def _parse_device(device: Element, map_elem: Element, source: str, fallback_id: str) -> WaferMap:
    """One <Device> with its <Bin> and <Data><Row> (or bare <Row>) children -> WaferMap."""
    scope = [device, map_elem]
    raw_type = _attr(scope, "BinType") or "ASCII"
    bin_type = _BIN_TYPE_BY_LOWER.get(raw_type.lower())
    if bin_type is None:
        raise DataError(f"{source}: BinType {raw_type!r} is not supported (supported: {', '.join(BIN_TYPES)})")
    null_bin = _attr(scope, "NullBin")
    bins = _children(device, "Bin")
    pass_keys = {
        _code_key(b.get("BinCode", "").strip(), bin_type, source)
        for b in bins
        if (b.get("BinQuality") or "").strip().lower() == "pass"
    }
    if not pass_keys:
        raise DataError(f'{source}: no <Bin BinQuality="Pass"> defined, so good and failed dies cannot be told apart')
    rows = _map_rows(device, source)
    width = len(null_bin) if null_bin else max(len(b.get("BinCode", "").strip()) for b in bins)
    tokens = [_row_tokens(row.text or "", max(width, 1), source, k + 1) for k, row in enumerate(rows)]
    lengths = {len(t) for t in tokens}
    if len(lengths) != 1 or 0 in lengths:
        raise DataError(f"{source}: rows have inconsistent numbers of dies {sorted(lengths)}")
    n_rows, n_cols = _int_attr(scope, "Rows", source), _int_attr(scope, "Columns", source)
    if n_rows is not None and n_rows != len(tokens):
        raise DataError(f"{source}: Rows={n_rows} but the map has {len(tokens)} <Row> elements")
    if n_cols is not None and n_cols != len(tokens[0]):
        raise DataError(f"{source}: Columns={n_cols} but the rows hold {len(tokens[0])} dies")
    null_key = _code_key(null_bin, bin_type, source) if null_bin else None
    grid = np.array(tokens)
    distinct, inverse = np.unique(grid, return_inverse=True)
    token_keys = [_code_key(token, bin_type, source) for token in distinct.tolist()]
    coded = [0 if key == null_key else 1 if key in pass_keys else 2 for key in token_keys]
    dies = np.asarray(coded, dtype=np.uint8)[inverse.reshape(grid.shape)]
    wafer_id = _attr(scope, "WaferId") or _attr([map_elem, device], "SubstrateId") or fallback_id
    token_counts = np.bincount(inverse.reshape(-1), minlength=len(distinct)).tolist()
    for code, declared, found in _bin_count_mismatches(bins, token_keys, token_counts, bin_type, source):
        err.print(
            f"warning: {source} (wafer {wafer_id}): <Bin BinCode={code!r}> declares BinCount={declared} "
            f"but the map holds {found} dies with that code; the map is read as it is"
        )
    meta: dict[str, Any] = {
        "id": wafer_id,
        "lot": _attr(scope, "LotId"),
        "date": _g85_date(_attr(scope, "CreateDate"), source),
        "label": None,
        "source": source,
    }
    product = _attr(scope, "ProductId")
    if product:
        meta["product"] = product
    return WaferMap(dies, meta)


def read_g85_maps(path: str | Path) -> list[WaferMap]:
    """Every wafer map (one per <Map><Device>) in a G85 XML file."""
    path = Path(path)
    source = str(path)
    try:
        root = SafeElementTree.parse(source).getroot()
    except (ParseError, DefusedXmlException, OSError, ValueError) as exc:
        raise DataError(f"{source}: not a readable XML file ({_one_line(exc)})") from exc
    map_elems = [root] if _local(root.tag) == "Map" else [e for e in root.iter() if _local(e.tag) == "Map"]
    pairs = [(device, m) for m in map_elems for device in _children(m, "Device")]
    if not pairs:
        raise DataError(f"{source}: no <Map><Device> element found; is this a SEMI G85 XML wafer map?")
    stem = path.stem
    return [
        _parse_device(device, m, source, stem if len(pairs) == 1 else f"{stem}:{k}")
        for k, (device, m) in enumerate(pairs)
    ]


def read_g85(path: str | Path) -> WaferMap:
    """The wafer map of a single-map G85 XML file (id = WaferId, else SubstrateId, else the file stem)."""
    maps = read_g85_maps(path)
    if len(maps) != 1:
        raise DataError(f"{path}: holds {len(maps)} wafer maps, expected one; use read_g85_maps")
    return maps[0]


def _check_bin_codes(bin_type: str, codes: Sequence[str], separator: str) -> None:
    if bin_type not in BIN_TYPES:
        raise ConfigError(f"bin_type {bin_type!r} is not one of {', '.join(BIN_TYPES)}")
    keys = [_code_key(c, bin_type, "write_g85") for c in codes]
    if len(set(keys)) != 3 or any(not c or any(ch.isspace() for ch in c) for c in codes):
        raise ConfigError(f"null_bin, pass_bin, fail_bin must be three different non-blank codes, got {codes}")
    if not separator and len({len(c) for c in codes}) != 1:
        raise ConfigError(f"without a separator all bin codes need the same width, got {codes}")


def _g85_timestamp(date: str | None) -> str | None:
    iso = to_iso_date(date, "write_g85 meta['date']")
    if iso is None:
        return None
    return dt.datetime.fromisoformat(iso).strftime("%Y%m%d%H%M%S") + "00"


def write_g85(
    wafer: WaferMap,
    path: str | Path,
    *,
    bin_type: str = "HexaDecimal",
    null_bin: str = "FF",
    pass_bin: str = "01",
    fail_bin: str = "EF",
    separator: str = " ",
    namespace: bool = True,
    data_wrapper: bool = True,
) -> Path:
    """Write ``wafer`` as a SEMI G85 XML map; :func:`read_g85` reads back the same dies, id, lot and date.

    No die -> ``null_bin``, good -> ``pass_bin`` (BinQuality Pass), failed -> ``fail_bin`` (Fail).
    ``separator=""`` writes fixed-width rows. ``data_wrapper=False`` writes the <Row> elements directly
    under <Device> (the second layout tools write) instead of inside <Data>. The label is not stored
    (G85 has no field for it).
    """
    dies = np.asarray(wafer.dies)
    if dies.ndim != 2 or dies.size == 0 or int(dies.max()) > 2:
        raise DataError(f"wafer {wafer.meta.get('id')}: dies must be a non-empty 2-D array coded 0/1/2")
    codes = (null_bin, pass_bin, fail_bin)
    _check_bin_codes(bin_type, codes, separator)
    meta = wafer.meta
    map_attrs = {"SubstrateType": "Wafer", "SubstrateId": str(meta["id"]), "FormatRevision": "SEMI G85 0703"}
    if namespace:
        map_attrs = {"xmlns": SEMI_NAMESPACE, **map_attrs}
    device_attrs = {
        "ProductId": meta.get("product"),
        "LotId": meta.get("lot"),
        "WaferId": str(meta["id"]),
        "CreateDate": _g85_timestamp(meta.get("date")),
        "BinType": bin_type,
        "NullBin": null_bin,
        "Rows": str(dies.shape[0]),
        "Columns": str(dies.shape[1]),
        "OriginLocation": "0",
        "Orientation": "0",
    }

    def attrs(items: dict[str, Any]) -> str:
        return "".join(f" {k}={quoteattr(str(v))}" for k, v in items.items() if v is not None)

    grid = np.asarray(codes)[dies]
    lines = ['<?xml version="1.0" encoding="utf-8"?>', f"<Map{attrs(map_attrs)}>", f"  <Device{attrs(device_attrs)}>"]
    for code, quality, description, value in ((pass_bin, "Pass", "Good die", 1), (fail_bin, "Fail", "Failed die", 2)):
        count = int((dies == value).sum())
        bin_attrs = {"BinCode": code, "BinQuality": quality, "BinCount": count, "BinDescription": description}
        lines.append(f"    <Bin{attrs(bin_attrs)}/>")
    rows = [separator.join(row) for row in grid.tolist()]
    if any("]]>" in row for row in rows):
        raise ConfigError(f"bin codes {codes} with separator {separator!r} write ']]>', which ends a CDATA section")
    if data_wrapper:
        lines.append('    <Data MapName="Map" MapVersion="1">')
        lines += [f"      <Row><![CDATA[{row}]]></Row>" for row in rows]
        lines.append("    </Data>")
    else:
        lines += [f"    <Row><![CDATA[{row}]]></Row>" for row in rows]
    lines += ["  </Device>", "</Map>", ""]
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
