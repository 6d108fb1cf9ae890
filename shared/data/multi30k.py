"""Read Multi30k task-1 parallel captions (en/de/fr) from local gzip files; download once if absent.

Where the files are looked for: the one rule of every corpus (shared/data/data_dirs.py): the
`data_dir` argument (--data-dir, or the train config's), $TWINFORMER_MULTI30K_DIR, then the cache
(`$TWINFORMER_CACHE/multi30k`, default `~/.cache/twinformer/multi30k`).
A file found in none of them is downloaded into the cache from the dataset's own GitHub repository.
Every file, local or downloaded, must match the sha256 below, so all copies are the same corpus.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from shared.data import data_dirs

LANGS = ("en", "de", "fr")
SPLITS = (
    "train",
    "val",
    "test_2016_flickr",
    "test_2017_flickr",
    "test_2017_mscoco",
    "test_2018_flickr",
)
BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
CORPUS = "multi30k"
ENV_DIR = data_dirs.CORPUS_ENV[CORPUS]
ENV_CACHE = data_dirs.ENV_CACHE
DOWNLOAD_TIMEOUT_S = 60

SHA256 = {
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2017_mscoco.fr.gz": "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "test_2018_flickr.de.gz": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "test_2018_flickr.en.gz": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
    "test_2018_flickr.fr.gz": "fb2b83fcceb937a4f7e3e93c1c51c22aba92f1e342391e6b5ba392b16a920501",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}

# Files already checked in this process, keyed by (path, size, mtime) so that a replaced file is
# checked again; hashing ~2 MB is cheap but needless on every load.
_verified: set[tuple[str, int, int]] = set()


class Multi30kError(RuntimeError):
    """A Multi30k file is missing, cannot be downloaded, or is inconsistent with its partner."""


class ChecksumError(Multi30kError):
    """A Multi30k file's sha256 differs from the published one."""


def cache_dir() -> Path:
    """Where downloads go: `$TWINFORMER_CACHE/multi30k`, else `~/.cache/twinformer/multi30k`."""
    return data_dirs.cache_dir(CORPUS)


def search_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched for the files, in priority order (the cache is always last)."""
    return data_dirs.search_dirs(CORPUS, data_dir)


def file_name(split: str, lang: str) -> str:
    """The raw file name of one side of one split, e.g. `train.de.gz`; validates both names."""
    if split not in SPLITS:
        raise ValueError(f"unknown Multi30k split {split!r}; choose one of {', '.join(SPLITS)}")
    if lang not in LANGS:
        raise ValueError(f"unknown Multi30k language {lang!r}; choose one of {', '.join(LANGS)}")
    return f"{split}.{lang}.gz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify_local(path: Path) -> None:
    """Check a local file's sha256 once per process; raise ChecksumError on a mismatch."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    actual = _sha256(path.read_bytes())
    expected = SHA256[path.name]
    if actual != expected:
        raise ChecksumError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or a different "
            f"version. Delete it (it will be downloaded again) or replace it with the file from "
            f"{BASE_URL}{path.name}"
        )
    _verified.add(key)


def download(name: str, dest_dir: str | os.PathLike[str], base_url: str | None = None) -> Path:
    """Download one raw file into dest_dir, verify its sha256, and move it into place atomically.

    base_url defaults to the module's BASE_URL (read at call time, so a mirror can be patched in).
    Nothing is left in dest_dir when the download fails or the checksum does not match.
    """
    if name not in SHA256:
        raise ValueError(f"{name!r} is not a Multi30k task-1 raw file; known: {', '.join(SHA256)}")
    url = (BASE_URL if base_url is None else base_url) + name
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:  # URLError covers HTTP errors; OSError timeouts
        raise Multi30kError(
            f"could not download Multi30k file {name} from {url}: {exc}. "
            f"Offline? Set {ENV_DIR} to a directory holding the Multi30k task-1 raw .gz files "
            f"(or give the directory with --data-dir, data_dir in a train config)."
        ) from exc
    actual = _sha256(data)
    if actual != SHA256[name]:
        # Checked before anything is written, so a bad download never reaches the cache.
        raise ChecksumError(
            f"downloaded {url} has sha256 {actual}, expected {SHA256[name]}; nothing was saved. "
            f"The upstream file may have changed or the download was corrupted; retry, or set "
            f"{ENV_DIR} to a directory holding verified copies."
        )
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    # Temp file in the same directory, so os.replace is an atomic rename: concurrent readers see
    # either no file or the complete one, never a partial write.
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest / name


def locate(split: str, lang: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of a verified local copy of one raw file, downloading it into the cache if needed."""
    name = file_name(split, lang)
    dirs = search_dirs(data_dir)
    for d in dirs:
        path = d / name
        if path.is_file():
            _verify_local(path)
            return path
    try:
        path = download(name, cache_dir())
    except Multi30kError as exc:
        looked = ", ".join(str(d) for d in dirs)
        raise type(exc)(f"{name} not found locally (looked in: {looked}); {exc}") from exc
    _verify_local(path)
    return path


def read_lines(path: Path) -> list[str]:
    """The sentences of one gzip'd file, one per line."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        # Strip the ends: a few lines carry stray leading/trailing spaces, which would otherwise
        # become tokens of their own. Inner spacing is kept as published.
        return [line.strip() for line in f]


def load_multi30k(
    split: str,
    src_lang: str = "en",
    tgt_lang: str = "de",
    data_dir: str | os.PathLike[str] | None = None,
) -> list[tuple[str, str]]:
    """(source, target) sentence pairs of one split and language pair, in file order."""
    if src_lang == tgt_lang:
        raise ValueError(f"source and target language are both {src_lang!r}; choose two of {LANGS}")
    src_path = locate(split, src_lang, data_dir)
    tgt_path = locate(split, tgt_lang, data_dir)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise Multi30kError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; line i of each must "
            f"be translations of each other. Replace the files with the published ones."
        )
    return list(zip(src, tgt, strict=True))
