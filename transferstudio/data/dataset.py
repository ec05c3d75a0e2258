"""Training samples: bucketed, resized, cropped, cached; batches reproducible for resume."""
from __future__ import annotations

import hashlib
import itertools

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from transferstudio.core.errors import DatasetError
from transferstudio.data.captions import CaptionVariation
from transferstudio.data.buckets import make_buckets, native_size, nearest_bucket
from transferstudio.data.images import ImageProblem, open_mask, open_rgb, open_rgb_and_alpha
from transferstudio.data.scan import ImageRecord, SkippedFile

_MASK64 = (1 << 64) - 1
DEFAULT_CACHE_BYTES = 1 << 30


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, H, W) float32 in [-1, 1]
    captions: list[str]
    original_sizes: list[tuple[int, int]]  # (h, w) of the source, EXIF-upright
    crop_top_left: list[tuple[int, int]]  # (top, left) in the resized (and flipped) image
    target_size: tuple[int, int]  # (h, w)
    masks: torch.Tensor | None = None  # (B, 1, H, W) in [0, 1]: how much each pixel counts (masked loss)
    prior: "Batch | None" = None  # class pictures trained beside these (prior preservation)
    # Each sample's identity for the encoding caches: the picture's content, bucket, crop and flip.
    keys: list[str] | None = None


def content_digest(path: Any, mask: Any = None) -> str:
    """What a picture (and its mask) holds, as 20 hex digits: encodings cached under it are found
    again after a rename and never reused after an edit."""
    digest = hashlib.blake2b(digest_size=10)
    for file in (path, mask):
        if file is not None:
            try:
                with open(file, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError:
                digest.update(str(file).encode())  # unreadable: opening the picture reports it
    return digest.hexdigest()


class _SplitMix64:
    """Tiny PRNG of our own: batch order must never change with a numpy/torch upgrade."""

    def __init__(self, *seeds: int) -> None:
        state = 0x243F6A8885A308D3
        for s in seeds:
            state = self._mix((state ^ (s & _MASK64)) & _MASK64)
        self.state = state

    @staticmethod
    def _mix(z: int) -> int:
        z = (z + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        return self._mix(self.state)

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.next() % (i + 1)  # modulo bias ~n/2**64: negligible
            items[i], items[j] = items[j], items[i]


class TrainingImages:
    """Samples per epoch = records × repeats; sample index i maps to one record.

    Late failures (a file deleted or damaged after the scan): the file is added
    to `late_skips` once and its slot in the batch is filled by another image
    of the same bucket, so batch shapes stay as `epoch_batches` promised and
    resume stays deterministic. Only when no image of that bucket can be read
    does `load_batch` raise DatasetError. `take_problems()` hands each late
    skip to the engine once, so it can warn (terminal, log.txt, the window).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        resolution: int,
        multiple: int,
        *,
        buckets: bool = True,
        flip: bool = True,
        crop: str = "center",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        captions: CaptionVariation | None = None,
        masked: bool = False,
    ) -> None:
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if not records:
            raise DatasetError("No training images.", "Pick a folder with at least one image.")
        self.records = tuple(records)
        self.resolution = resolution
        self.multiple = multiple
        self.flip = flip
        self.crop = crop
        self.cache_bytes = cache_bytes
        self.captions = captions or CaptionVariation()
        self.masked = masked  # batches carry masks: a picture's alpha channel or its `name.mask.png`
        self.late_skips: list[SkippedFile] = []
        self._reported = 0  # late_skips[:_reported] were handed out by take_problems()

        side = native_size(resolution, multiple)
        choices = make_buckets(resolution, multiple) if buckets else [(side, side)]
        # Bucket sizes are (w, h), as in buckets.py.
        self._record_bucket = [
            nearest_bucket(r.width, r.height, choices) if buckets else (side, side)
            for r in self.records
        ]
        self._sample_record: list[int] = []
        for ri, r in enumerate(self.records):
            self._sample_record.extend([ri] * max(1, r.repeats))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._bad: set[int] = set()
        self._original: dict[int, tuple[int, int]] = {}  # record -> source (h, w)
        self._content: dict[int, str] = {}  # record -> digest of its file (and mask) as last read

    def __len__(self) -> int:
        return len(self._sample_record)

    @property
    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Samples (with repeats) per (width, height) bucket."""
        counts: dict[tuple[int, int], int] = {}
        for ri in self._sample_record:
            b = self._record_bucket[ri]
            counts[b] = counts.get(b, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (kv[0][0] / kv[0][1], kv[0][0])))

    def take_problems(self) -> list[SkippedFile]:
        """Pictures that failed to load since the last call (each once, with its reason);
        their slots were filled by other pictures of the same bucket. Call after each step
        and warn about each: a picture damaged during training must not vanish silently."""
        new = self.late_skips[self._reported:]
        self._reported = len(self.late_skips)
        return list(new)

    def record(self, index: int) -> ImageRecord:
        return self.records[self._sample_record[index]]

    def bucket_of(self, index: int) -> tuple[int, int]:
        """(width, height) of the sample's bucket."""
        return self._record_bucket[self._sample_record[index]]

    def epoch_batches(self, epoch: int, seed: int, batch_size: int) -> list[list[int]]:
        """Batches of sample indices for one epoch; a pure function of its arguments.

        Shuffle samples, group by bucket, cut into batches of <= batch_size
        (the last batch of a bucket may be smaller; nothing is dropped), then
        shuffle the batch order. Uses a built-in PRNG so the result is the same
        on every machine and library version.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = _SplitMix64(seed, epoch)
        order = list(range(len(self._sample_record)))
        rng.shuffle(order)
        groups: dict[tuple[int, int], list[int]] = {}
        for i in order:
            groups.setdefault(self.bucket_of(i), []).append(i)
        batches = [
            members[k:k + batch_size]
            for _, members in sorted(groups.items())
            for k in range(0, len(members), batch_size)
        ]
        rng.shuffle(batches)
        return batches

    def load_batch(self, indices: list[int], rng: torch.Generator | None) -> Batch:
        """Load samples that share a bucket.

        `rng` is a torch.Generator (CPU): per sample, a flip draw (when flip is
        on) then a crop offset draw (when crop="random"), in index order; saving
        and restoring `rng.get_state()` reproduces them. rng=None means no flip
        and centre crop (previews, validation).
        """
        if not indices:
            raise ValueError("empty batch")
        bw, bh = self.bucket_of(indices[0])
        if any(self.bucket_of(i) != (bw, bh) for i in indices):
            raise ValueError("indices of one batch must share a bucket")
        samples = []
        for i in indices:
            ri, resized, original = self._usable(self._sample_record[i])
            rh, rw = resized.shape[:2]
            flip = self.flip and rng is not None and bool(torch.rand((), generator=rng) < 0.5)
            if self.crop == "random" and rng is not None:
                top = int(torch.randint(0, rh - bh + 1, (), generator=rng))
                left = int(torch.randint(0, rw - bw + 1, (), generator=rng))
            else:
                top, left = (rh - bh) // 2, (rw - bw) // 2
            caption = self.records[ri].caption
            caption = self.captions.apply(caption, rng) if rng is not None else caption
            samples.append((ri, resized, original, top, left, flip, caption))
        return self._batch(samples, (bh, bw))

    def possible_captions(self) -> list[str] | None:
        """Every caption training can give these pictures (with their caption variation), or None
        when there are too many to list."""
        found: set[str] = set()
        for record in self.records:
            options = self.captions.possible(record.caption)
            if options is None:
                return None
            found.update(options)
            found.add(record.caption)  # as written: batches loaded without variation (checks, validation)
        return sorted(found)

    def encoding_variants(self) -> list[tuple[int, bool]]:
        """(record, flipped) for every picture as training can cut it with a centre crop: what an
        encoding cache holds. Both flips when flipping is on."""
        flips = (False, True) if self.flip else (False,)
        return [(ri, flip) for ri in range(len(self.records)) for flip in flips]

    def load_variants(self, variants: list[tuple[int, bool]]) -> Batch:
        """A batch of the given (record, flipped) pictures, centre-cropped, captions as written;
        the records must share a bucket."""
        buckets = {self._record_bucket[ri] for ri, _ in variants}
        if len(buckets) != 1:
            raise ValueError("variants of one batch must share a bucket")
        (bw, bh), = buckets
        samples = []
        for record, flip in variants:
            ri, resized, original = self._usable(record)
            rh, rw = resized.shape[:2]
            samples.append((ri, resized, original, (rh - bh) // 2, (rw - bw) // 2, flip, self.records[ri].caption))
        return self._batch(samples, (bh, bw))

    def variant_bucket(self, variant: tuple[int, bool]) -> tuple[int, int]:
        return self._record_bucket[variant[0]]

    def _batch(self, samples: list[tuple], size: tuple[int, int]) -> Batch:
        bh, bw = size
        arrays, captions, originals, crops, keys = [], [], [], [], []
        for ri, resized, original, top, left, flip, caption in samples:
            rw = resized.shape[1]
            patch = resized[top:top + bh, left:left + bw]
            keys.append(f"{self._content[ri]}-{bw}x{bh}-{top}.{left}-{'flip' if flip else 'as-is'}"
                        f"{'-masked' if self.masked else ''}")
            if flip:
                patch = patch[:, ::-1]
                left = rw - bw - left  # where the crop sits in the flipped image
            arrays.append(patch)
            captions.append(caption)
            originals.append(original)
            crops.append((top, left))
        stacked = np.ascontiguousarray(np.stack(arrays))  # (B, H, W, 3) uint8, or 4 with the mask
        channels = torch.from_numpy(stacked).permute(0, 3, 1, 2).float()
        pixels = channels[:, :3].div(127.5).sub_(1.0)
        masks = channels[:, 3:].div(255.0).contiguous() if self.masked else None
        return Batch(pixels.contiguous(), captions, originals, crops, (bh, bw), masks, keys=keys)

    def _usable(self, ri: int) -> tuple[int, np.ndarray, tuple[int, int]]:
        """The record's pixels, or a same-bucket stand-in when its file went bad."""
        # the stand-ins are listed only when needed (a large pretraining set has tens of thousands)
        candidates = itertools.chain([ri], (
            o for o in range(len(self.records))
            if o != ri and self._record_bucket[o] == self._record_bucket[ri]
        ))
        for o in candidates:
            if o in self._bad:
                continue
            try:
                resized, original = self._resized(o)
            except ImageProblem as exc:
                self._bad.add(o)
                self.late_skips.append(SkippedFile(self.records[o].path, exc.reason))
                continue
            return o, resized, original
        failed = self.records[ri]
        reasons = "; ".join(s.reason for s in self.late_skips if s.path == failed.path)
        raise DatasetError(
            f"Cannot read training image {failed.path} ({reasons}), nor any other image of its size.",
            "The image folder changed after it was scanned; rescan it and restart training.",
        )

    def _resized(self, ri: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image scaled to cover its bucket (aspect kept), plus source (h, w); cached."""
        cached = self._cache.get(ri)
        if cached is not None:
            self._cache.move_to_end(ri)
            return cached, self._original[ri]
        record = self.records[ri]
        self._content[ri] = content_digest(record.path, record.mask if self.masked else None)
        mask = None
        if not self.masked:
            im = open_rgb(record.path)
        elif record.mask is not None:
            im, mask = open_rgb(record.path), open_mask(record.mask)
        else:
            im, mask = open_rgb_and_alpha(record.path)
        w, h = im.size
        bw, bh = self._record_bucket[ri]
        scale = max(bw / w, bh / h)
        size = (max(bw, round(w * scale)), max(bh, round(h * scale)))
        if size != (w, h):
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        arr = np.asarray(im, dtype=np.uint8)
        if self.masked:  # the mask travels with the picture as a fourth channel: same crop, same flip
            mask = mask.resize(size, Image.Resampling.BILINEAR) if mask is not None else None
            plane = np.asarray(mask, dtype=np.uint8) if mask is not None else np.full(arr.shape[:2], 255, np.uint8)
            arr = np.dstack([arr, plane])
        self._original[ri] = (h, w)
        self._store(ri, arr)
        return arr, (h, w)

    def _store(self, ri: int, arr: np.ndarray) -> None:
        if arr.nbytes > self.cache_bytes:
            return
        self._cache[ri] = arr
        self._cached_bytes += arr.nbytes
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes
