#!/usr/bin/env python3
"""Build a GeoIP2-City-shaped MaxMind DB (.mmdb) from a small CSV.

Usage: python3 geo/gen_sample.py [--csv FILE] [--out FILE] [--verify]

The CSV (default geo/sample.csv) has the header
    network,latitude,longitude,city,country_iso,continent_code
and one row per network; blank lines and lines starting with '#' are ignored.

The output (default geo/sample.mmdb) has the layout of MaxMind's GeoIP2-City
and GeoLite2-City: an IPv6 search tree with IPv4 networks placed at ::/96,
database_type "GeoIP2-City", and records of the form
    city.{geoname_id, names.en}
    continent.{code, geoname_id, names.en}
    country.{iso_code, geoname_id, names.en}
    location.{latitude, longitude (doubles), accuracy_radius (km)}

Networks may nest: a more specific row wins for its addresses, whatever the
row order (rows are inserted from the widest prefix to the narrowest). The
enclosing network is then stored split around it, so its other addresses
report a longer prefix length than the row's.

The output is reproducible: build_epoch comes from --build-epoch, else from
SOURCE_DATE_EPOCH, else a fixed constant, so the same CSV gives the same bytes.

Needs mmdb-writer and netaddr (and maxminddb for --verify); geo/rebuild.sh
installs pinned versions into geo/.venv and runs this script.
"""
import argparse
import csv
import ipaddress
import math
import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

HEADER = ["network", "latitude", "longitude", "city", "country_iso",
          "continent_code"]

# Fixed default build_epoch (2026-11-26T00:00:00Z) so rebuilds are byte-identical.
DEFAULT_BUILD_EPOCH = 1795651200

ACCURACY_RADIUS_KM = 20

# GeoNames ids of the continents (the ones GeoIP2 databases carry).
CONTINENTS = {
    "AF": ("Africa", 6255146),
    "AS": ("Asia", 6255147),
    "EU": ("Europe", 6255148),
    "NA": ("North America", 6255149),
    "SA": ("South America", 6255150),
    "OC": ("Oceania", 6255151),
    "AN": ("Antarctica", 6255152),
}

# English country names; a code missing here is stored with the code as name.
COUNTRY_NAMES = {
    "AE": "United Arab Emirates", "AQ": "Antarctica", "AR": "Argentina",
    "AT": "Austria", "AU": "Australia", "BE": "Belgium", "BR": "Brazil",
    "CA": "Canada", "CH": "Switzerland", "CL": "Chile", "CN": "China",
    "CO": "Colombia", "CZ": "Czechia", "DE": "Germany", "DK": "Denmark",
    "EG": "Egypt", "ES": "Spain", "FI": "Finland", "FR": "France",
    "GB": "United Kingdom", "GR": "Greece", "HK": "Hong Kong",
    "ID": "Indonesia", "IE": "Ireland", "IL": "Israel", "IN": "India",
    "IS": "Iceland", "IT": "Italy", "JP": "Japan", "KE": "Kenya",
    "KR": "South Korea", "MA": "Morocco", "MX": "Mexico", "MY": "Malaysia",
    "NG": "Nigeria", "NL": "Netherlands", "NO": "Norway", "NZ": "New Zealand",
    "PE": "Peru", "PH": "Philippines", "PL": "Poland", "PT": "Portugal",
    "RU": "Russia", "SA": "Saudi Arabia", "SE": "Sweden", "SG": "Singapore",
    "TH": "Thailand", "TR": "Turkey", "TW": "Taiwan", "UA": "Ukraine",
    "US": "United States", "VN": "Vietnam", "ZA": "South Africa",
}

# Never map these: fnroute must treat loopback clients as unknown.
FORBIDDEN = [ipaddress.ip_network("127.0.0.0/8"),
             ipaddress.ip_network("::1/128")]
# In the GeoIP2-City layout IPv4 lives at ::/96, so IPv6 rows must avoid it.
IPV4_SUBTREE = ipaddress.ip_network("::/96")
IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


class CsvError(Exception):
    pass


class Row:
    __slots__ = ("line", "network", "lat", "lon", "city", "cc", "cont")

    def __init__(self, line, network, lat, lon, city, cc, cont):
        self.line, self.network = line, network
        self.lat, self.lon = lat, lon
        self.city, self.cc, self.cont = city, cc, cont


def parse_coord(text, name, limit, where):
    try:
        value = float(text)
    except ValueError:
        raise CsvError(f"{where}: {name} {text!r} is not a number") from None
    if not math.isfinite(value) or not -limit <= value <= limit:
        raise CsvError(f"{where}: {name} {text!r} is outside -{limit}..{limit}")
    return value


def parse_network(text, where):
    if "/" not in text:
        raise CsvError(f"{where}: network {text!r} has no prefix length "
                       "(e.g. 198.51.100.0/24, 2001:db8::/32)")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise CsvError(f"{where}: network {text!r} is not an IPv4 or IPv6 "
                           "CIDR (e.g. 198.51.100.0/24, 2001:db8::/32)") from None
        raise CsvError(f"{where}: network {text!r} has host bits set "
                       f"(did you mean {loose}?)") from None
    for bad in FORBIDDEN:
        if net.version == bad.version and net.overlaps(bad):
            raise CsvError(f"{where}: network {text} overlaps loopback {bad}, "
                           "which must stay unmapped")
    if net.version == 6:
        if net.overlaps(IPV4_MAPPED):
            raise CsvError(f"{where}: network {text} is IPv4-mapped IPv6; "
                           "write the IPv4 network in dotted form instead")
        if net.overlaps(IPV4_SUBTREE):
            raise CsvError(f"{where}: network {text} overlaps ::/96, where "
                           "this layout stores IPv4")
    return net


def read_csv(path):
    """Return the rows of the CSV, raising CsvError with FILE:LINE on any fault."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CsvError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CsvError(f"{path}: not UTF-8: {e}") from None

    rows, seen, header_seen = [], {}, False
    for lineno, raw in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = [x.strip() for x in next(csv.reader([raw]))]
        if not header_seen:
            if fields != HEADER:
                raise CsvError(f"{where}: expected the header line "
                               f"{','.join(HEADER)!r}, got {raw!r}")
            header_seen = True
            continue
        if len(fields) != len(HEADER):
            raise CsvError(f"{where}: expected {len(HEADER)} fields "
                           f"({','.join(HEADER)}), got {len(fields)}")
        network, lat, lon, city, cc, cont = fields
        net = parse_network(network, where)
        lat = parse_coord(lat, "latitude", 90, where)
        lon = parse_coord(lon, "longitude", 180, where)
        if not city:
            raise CsvError(f"{where}: city is empty")
        if len(cc) != 2 or not cc.isascii() or not cc.isalpha() or not cc.isupper():
            raise CsvError(f"{where}: country_iso {cc!r} is not a two-letter "
                           "upper-case ISO 3166-1 code")
        if cont not in CONTINENTS:
            raise CsvError(f"{where}: continent_code {cont!r} is not one of "
                           f"{' '.join(sorted(CONTINENTS))}")
        if net in seen:
            raise CsvError(f"{where}: network {net} already given on line "
                           f"{seen[net]}")
        seen[net] = lineno
        rows.append(Row(lineno, net, lat, lon, city, cc, cont))
    if not header_seen:
        raise CsvError(f"{path}: no header line ({','.join(HEADER)})")
    if not rows:
        raise CsvError(f"{path}: no networks")
    return rows


def country_geoname_id(cc):
    # Synthetic but stable and unique: derived from the two letters.
    return 2_000_000 + (ord(cc[0]) - 65) * 26 + (ord(cc[1]) - 65)


def city_geoname_id(city, cc, used):
    # Synthetic but stable: adding a row does not renumber the others.
    key = f"{city}|{cc}"
    gid = 9_000_000 + zlib.crc32(key.encode()) % 1_000_000
    while used.setdefault(gid, key) != key:
        gid += 1
    return gid


def build_records(rows):
    """One record per place; rows with the same place share the same object,
    so the writer stores the record once."""
    from mmdb_writer import MmdbF64

    records, used_ids = {}, {}
    for r in rows:
        key = (r.lat, r.lon, r.city, r.cc, r.cont)
        if key in records:
            continue
        cont_name, cont_id = CONTINENTS[r.cont]
        records[key] = {
            "city": {"geoname_id": city_geoname_id(r.city, r.cc, used_ids),
                     "names": {"en": r.city}},
            "continent": {"code": r.cont, "geoname_id": cont_id,
                          "names": {"en": cont_name}},
            "country": {"iso_code": r.cc, "geoname_id": country_geoname_id(r.cc),
                        "names": {"en": COUNTRY_NAMES.get(r.cc, r.cc)}},
            # MmdbF64 forces the MMDB double type. (Plain Python floats are
            # doubles too by default, but the writer's dedup cache treats
            # 20.0 and the integer 20 as equal, so a whole-numbered
            # coordinate could be stored as a pointer to an integer.)
            "location": {"latitude": MmdbF64(r.lat),
                         "longitude": MmdbF64(r.lon),
                         "accuracy_radius": ACCURACY_RADIUS_KM},
        }
    return records


def write_mmdb(rows, out, build_epoch, description):
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    records = build_records(rows)
    w = MMDBWriter(ip_version=6, ipv4_compatible=True,
                   database_type="GeoIP2-City", languages=["en"],
                   description=description)
    meta = w._build_meta

    def build_meta():
        m = meta()
        m["build_epoch"] = build_epoch
        return m
    w._build_meta = build_meta  # mmdb-writer 0.2.7 always stamps time.time()

    # Widest first: the writer splits an existing leaf when a more specific
    # network is inserted under it, but a wider network inserted later would
    # overwrite everything beneath it. IPv4 is mapped to ::/96, so compare
    # prefix lengths in the 128-bit tree.
    def tree_len(r):
        return r.network.prefixlen + (96 if r.network.version == 4 else 0)

    for r in sorted(rows, key=lambda r: (tree_len(r), r.line)):
        rec = records[(r.lat, r.lon, r.city, r.cc, r.cont)]
        w.insert_network(IPSet([str(r.network)]), rec)

    tmp = f"{out}.tmp{os.getpid()}"
    try:
        w.to_db_file(tmp)
        os.replace(tmp, out)  # atomic: a watching fnroute never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verify(rows, out):
    """Read the file back with the maxminddb reader and check every row."""
    import maxminddb

    failures = []
    with maxminddb.open_database(out, maxminddb.MODE_MEMORY) as db:
        md = db.metadata()
        if md.database_type != "GeoIP2-City" or md.ip_version != 6:
            failures.append(f"metadata: {md.database_type} v{md.ip_version}")
        for r in rows:
            nested = any(o is not r and o.network.version == r.network.version
                         and o.network.subnet_of(r.network) for o in rows)
            for addr in (r.network.network_address, r.network.broadcast_address):
                rec, plen = db.get_with_prefix_len(str(addr))
                where = f"line {r.line} {r.network} ({addr})"
                if rec is None:
                    failures.append(f"{where}: not found")
                    continue
                loc = rec["location"]
                got = (rec["city"]["names"]["en"], rec["country"]["iso_code"],
                       rec["continent"]["code"], loc["latitude"], loc["longitude"])
                want = (r.city, r.cc, r.cont, r.lat, r.lon)
                if got != want or not all(isinstance(loc[k], float)
                                          for k in ("latitude", "longitude")):
                    failures.append(f"{where}: got {got!r}, want {want!r}")
                if not nested and plen != r.network.prefixlen:
                    failures.append(f"{where}: prefix length {plen}, "
                                    f"want {r.network.prefixlen}")
        for addr in ("127.0.0.1", "::1"):
            if db.get(addr) is not None:
                failures.append(f"{addr}: found, must be unmapped")
    return failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default=os.path.join(HERE, "sample.csv"),
                    help="input CSV (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(HERE, "sample.mmdb"),
                    help="output .mmdb (default: %(default)s)")
    ap.add_argument("--build-epoch", type=int,
                    default=int(os.environ.get("SOURCE_DATE_EPOCH",
                                               DEFAULT_BUILD_EPOCH)),
                    help="metadata build_epoch (default: $SOURCE_DATE_EPOCH "
                         "or %d)" % DEFAULT_BUILD_EPOCH)
    ap.add_argument("--description",
                    default="fnroute synthetic GeoIP2-City sample "
                            "(documentation and reserved ranges only)",
                    help="metadata description (en)")
    ap.add_argument("--verify", action="store_true",
                    help="read the output back with maxminddb and check it")
    args = ap.parse_args(argv)

    try:
        rows = read_csv(args.csv)
    except CsvError as e:
        print(f"gen_sample: {e}", file=sys.stderr)
        return 2
    try:
        import mmdb_writer  # noqa: F401
        import netaddr  # noqa: F401
    except ImportError as e:
        print(f"gen_sample: {e}; run geo/rebuild.sh, or pip install "
              "mmdb-writer netaddr", file=sys.stderr)
        return 2

    write_mmdb(rows, args.out, args.build_epoch, args.description)
    print(f"wrote {args.out}: {len(rows)} networks, "
          f"{os.path.getsize(args.out)} bytes")

    if args.verify:
        failures = verify(rows, args.out)
        for f in failures:
            print(f"gen_sample: verify: {f}", file=sys.stderr)
        if failures:
            return 1
        print(f"verified {args.out}: every row reads back, loopback unmapped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
