"""Convert the published phone latency tables (MIT Han Lab) into hwnas tables, citing the source.

* ``mobile``: ProxylessNAS's `mobile_trim.yaml` (Cai, Zhu, Han, "ProxylessNAS: Direct Neural Architecture
  Search on Target Task and Hardware", ICLR 2019): Google Pixel 1, TensorFlow Lite, batch 1, mobile space,
  224.
* ``note10``: Once-for-All's `{160..224}_lookup_table.yaml` (Cai, Gan, Wang, Zhang, Han, "Once-for-All: Train
  One Network and Specialize it for Efficient Deployment", ICLR 2020): Samsung Galaxy Note10, MobileNetV3
  space (`ofa`), one table per input size.

Both give the mean per key (`statistic: mean`). Once-for-All gives a standard deviation, stored as iqr_ms ≈
1.349 std (normal approximation); ProxylessNAS's `var` is undocumented (variance or deviation), so its spread
is left out. Run ``python -m hwnas.latency.convert DATA_DIR OUT_DIR`` to regenerate the shipped tables.
"""

from __future__ import annotations

import argparse
import datetime
import logging
from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.latency.table import LatencyTable, TableEntry, TableMetadata
from hwnas.ops.opconfig import OpConfig

log = logging.getLogger(__name__)
NOTE10_SIZES = (160, 176, 192, 208, 224)
IQR_PER_STD = 1.349
PROXYLESS_SOURCE = (
    "ProxylessNAS mobile latency lookup table mobile_trim.yaml (Cai, Zhu, Han, ICLR 2019; "
    "github.com/mit-han-lab/proxylessnas), converted by hwnas.latency.convert"
)
OFA_SOURCE = (
    "Once-for-All Note10 latency lookup table {size}_lookup_table.yaml (Cai, Gan, Wang, Zhang, Han, "
    "ICLR 2020; github.com/mit-han-lab/once-for-all), converted by hwnas.latency.convert"
)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise HwnasError(f"published latency table {path} does not exist") from None
    except yaml.YAMLError as err:
        raise HwnasError(f"malformed published latency table {path}: {err}") from None
    if not isinstance(data, dict) or not data:
        raise HwnasError(f"malformed published latency table {path}: expected a mapping of op keys")
    return data


def _entries(data: dict, path: Path, spread: str | None) -> dict[str, TableEntry]:
    entries = {}
    for key, value in data.items():
        OpConfig.from_key(key)  # validates the key
        if not isinstance(value, dict) or "mean" not in value or "count" not in value:
            raise HwnasError(f"malformed published latency table {path}: entry {key} lacks mean/count")
        iqr = IQR_PER_STD * value[spread] if spread and isinstance(value.get(spread), (int, float)) else None
        raw = {"median_ms": value["mean"], "iqr_ms": iqr, "runs": value["count"]}
        entries[key] = TableEntry.from_json(raw, f"malformed published latency table {path}, entry {key}")
    return entries


def convert_proxyless(path: str | Path) -> LatencyTable:
    """ProxylessNAS's Pixel 1 table as target ``mobile``, space ``mobile``, input size 224."""
    path = Path(path)
    metadata = TableMetadata(
        target="mobile",
        device="Google Pixel 1",
        runtime="TensorFlow Lite",
        runtime_version="not documented",
        threads=None,
        space="mobile",
        input_size=224,
        source=PROXYLESS_SOURCE,
        date=_today(),
        statistic="mean",
        details={
            "published": "ICLR 2019",
            "file": path.name,
            "note": "device from the paper (Sec. 4.2); the file names none; spread ('var') not converted",
        },
    )
    return LatencyTable(metadata, _entries(_read_yaml(path), path, None))


def convert_ofa(path: str | Path, input_size: int) -> LatencyTable:
    """One Once-for-All Note10 table as target ``note10``, space ``ofa`` (MobileNetV3), at `input_size`."""
    path = Path(path)
    metadata = TableMetadata(
        target="note10",
        device="Samsung Galaxy Note10",
        runtime="TensorFlow Lite",
        runtime_version="not documented",
        threads=None,
        space="ofa",
        input_size=input_size,
        source=OFA_SOURCE.format(size=input_size),
        date=_today(),
        statistic="mean",
        details={"published": "ICLR 2020", "file": path.name, "iqr_ms": "1.349 x the published std"},
    )
    return LatencyTable(metadata, _entries(_read_yaml(path), path, "std"))


def convert_all(data_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Convert every published table under `data_dir` (layout of /work/shared/latency_data) into `out_dir`."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tables = [convert_proxyless(data_dir / "proxylessnas" / "mobile_trim.yaml")]
    tables += [convert_ofa(data_dir / "ofa_note10" / f"{s}_lookup_table.yaml", s) for s in NOTE10_SIZES]
    written = []
    for table in tables:
        m = table.metadata
        written.append(table.save(out_dir / f"{m.target}_{m.space}_{m.input_size}.json"))
        log.info("wrote %s (%d entries)", written[-1], len(table))
    return written


def _today() -> str:
    return datetime.date.today().isoformat()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Convert the published phone latency tables.")
    parser.add_argument("data_dir", help="directory holding proxylessnas/ and ofa_note10/")
    parser.add_argument("out_dir", help="where the hwnas tables go (e.g. latency_tables/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert_all(args.data_dir, args.out_dir)
