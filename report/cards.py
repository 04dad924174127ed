"""One card per sample, per dataset: the pictures a person checks and the numbers beside them. Each
dataset's spec names its card function (runtime/registry.py: Output.card), one of these or its own.

A card function takes the manifest row (dict) and the sample's members (name -> decoded value; a
member that did not decode is absent and named in `problems`), and returns a Card. A picture that
cannot be drawn is a problem on the card, never an exception out of the report."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from report.images import GREY, data_uri, heatmap, hex_color, mask_overlay, palette, thumbnail, with_boxes

REF_THUMB = 96  # MultiID reference thumbnails
REFS_PER_IDENTITY = 3


@dataclass
class Pic:
    label: str
    uri: str
    color: str | None = None  # border colour (MultiID references: the identity's colour)
    big: bool = False  # shown larger: a group photo whose faces are small


@dataclass
class RefGroup:
    """MultiID: one identity's reference thumbnails, shown beside the group photo."""
    label: str
    color: str
    pics: list[Pic]


@dataclass
class Card:
    key: str
    text: str = ""  # the prompt or caption
    pics: list[Pic] = field(default_factory=list)
    refs: list[RefGroup] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (css colour, text)
    problems: list[str] = field(default_factory=list)

    def pic(self, label: str, draw, big: bool = False) -> None:
        """Add the picture `draw()` returns; a member missing or malformed becomes a problem."""
        try:
            self.pics.append(Pic(label, data_uri(draw()), big=big))
        except KeyError as e:
            self.problems.append(f"{label}: no {e.args[0]} member to draw")
        except Exception as e:  # noqa: BLE001 - the report shows what is wrong with a sample
            self.problems.append(f"{label}: {type(e).__name__}: {e}")


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return "nan" if np.isnan(v) else f"{v:.3f}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


def facts(row: dict, names) -> list[tuple[str, str]]:
    return [(n, fmt(row.get(n))) for n in names if row.get(n) is not None]


def dip(row: dict, sample: dict, ctx: dict) -> Card:
    """x_r / x_w / x_l, M_prior tinted over x_w with the subject boxes, M_d (seed 000, eq. 7-8)."""
    c = Card(row["key"], text=row.get("prompt") or "")
    c.pic("x_r reference", lambda: thumbnail(sample["ref"]))
    c.pic("x_w winner", lambda: thumbnail(sample["win"]))
    c.pic("x_l loser", lambda: thumbnail(sample["lose"]))
    boxes = list(row.get("boxes") or [])
    colors = [palette(i) for i in range(len(boxes))]
    c.pic("M_prior on x_w", lambda: with_boxes(mask_overlay(sample["win"], sample["mask"]), boxes, colors))
    c.pic("M_d complexity", lambda: heatmap(sample["complexity"], thumbnail(sample["win"]).size))
    c.legend = [(hex_color(col), f"{s}: rubric x_w {fmt(p)}, x_l {fmt(n)}")
                for col, s, p, n in zip(colors, row.get("subjects") or [], row.get("pos_scores") or [],
                                        row.get("neg_scores") or [])]
    c.facts = facts(row, ("category", "pos_scores", "pos_threshold", "neg_scores", "neg_threshold",
                          "encoder_cosine", "mask_area", "source", "generation_mode", "qa"))
    if row.get("captions") is not None:  # the inpainting prompt; a template's are the subject phrases
        c.facts.append((f"captions ({row.get('caption_source') or 'vlm'})", "; ".join(map(str, row["captions"]))))
    return c


def multiid(row: dict, sample: dict, ctx: dict) -> Card:
    """The group photo with each face boxed in its identity's colour, and those identities'
    reference thumbnails beside it (ctx["refs"]: identity -> [Pic])."""
    c = Card(row["key"], text=row.get("caption") or "")
    ids = list(row.get("identity") or [])  # the run's assignment, at its assign_threshold
    colors = [palette(i) if i >= 0 else GREY for i in ids]
    c.pic("group photo", lambda: with_boxes(sample["image"], row.get("boxes") or [], colors,
                                            labels=list(range(len(ids))), side=512), big=True)
    top1, sims, margins = row.get("top1_identity") or [], row.get("similarity") or [], row.get("margin") or []
    for i, (ident, col) in enumerate(zip(ids, colors)):
        who = f"id {ident}" if ident >= 0 else f"unassigned (nearest id {top1[i]})"
        c.legend.append((hex_color(col), f"face {i}: {who}, similarity {fmt(sims[i])}, margin {fmt(margins[i])}"))
    for ident in dict.fromkeys(i for i in ids if i >= 0):
        refs = ctx.get("refs", {}).get(int(ident), [])
        c.refs.append(RefGroup(f"id {ident}: best {len(refs)} of its bank references",
                               hex_color(palette(ident)), refs))
    c.facts = facts(row, ("split", "n_faces", "n_assigned", "assign_threshold", "aesthetic", "paired", "source"))
    return c


def uper(row: dict, sample: dict, ctx: dict) -> Card:
    """ref_clean (the conditioning, on white) beside the target; turn (a) attributes with turn (b)
    verdicts, the rating and R_sub (seed 001, sec. 3.1.3 / 3.2.1)."""
    c = Card(row["key"], text=row.get("prompt") or "")
    if "ref" in sample:
        c.pic("reference", lambda: thumbnail(sample["ref"]))
    c.pic("ref_clean", lambda: thumbnail(sample["ref_clean"]))
    c.pic("target", lambda: thumbnail(sample["target"]))
    for verdict in row.get("verdicts") or []:
        yes = verdict.rstrip().lower().endswith("yes")
        c.legend.append(("#2a9d3a" if yes else "#c0392b", verdict))
    c.facts = facts(row, ("subject", "attributes", "rating", "rating_threshold", "attributes_present", "r_sub", "r_sub_patch",
                          "r_sub_cls", "r_sub_crops", "r_sub_penalty", "fg_fraction", "source", "qa"))
    return c


def iapo(row: dict, sample: dict, ctx: dict) -> Card:
    """Both images with the matched instance boxes (one colour per instance in both) and the eq. 1
    weight maps; rho = 1 marks an instance that disagrees with the global label."""
    c = Card(row["key"], text=row.get("caption") or "")
    cats = list(row.get("categories") or [])
    colors = [palette(i) for i in range(len(cats))]
    winner = row.get("winner")
    for side in (0, 1):
        name = f"image_{side}" + (" (preferred)" if winner == side else "")
        c.pic(name, lambda s=side: with_boxes(sample[f"image_{s}"], row.get(f"boxes_{s}") or [], colors,
                                               labels=list(range(len(cats)))))
    # 1 (an untouched cell) at the colour map's neutral middle: up-weighted red, down / negative blue
    lo = min(0.0, row.get("w_neg") or 0.0, 2.0 - (row.get("w_pos") or 1.0))
    hi = 2.0 - lo
    for side in (0, 1):
        if f"weights_{side}" in sample:
            c.pic(f"weights_{side}", lambda s=side: heatmap(sample[f"weights_{s}"], thumbnail(sample[f"image_{s}"]).size,
                                                             lo, hi, cmap="coolwarm"))
    for i, (col, cat, rho) in enumerate(zip(colors, cats, row.get("rho") or [])):
        c.legend.append((hex_color(col), f"{i} {cat}: rho {rho} ({'disagrees with' if rho else 'agrees with'} "
                                         f"the global label)"))
    for name, why in zip(row.get("dropped") or [], row.get("drop_reasons") or []):
        c.legend.append((hex_color(GREY), f"dropped {name}: {why}"))
    c.facts = facts(row, ("winner", "label_0", "label_1", "n_planned", "n_instances", "n_agree", "n_disagree",
                          "rho_mean", "w_pos", "w_neg", "source", "qa"))
    return c


def generic(row: dict, sample: dict, ctx: dict) -> Card:
    """Any other dataset (multiid_refs, new schemas): every image member and the scalar columns."""
    c = Card(row["key"])
    for name, value in sample.items():
        if isinstance(value, np.ndarray) and value.ndim == 3 and value.dtype == np.uint8:
            c.pic(name, lambda v=value: thumbnail(v))
    c.facts = [(k, fmt(v)) for k, v in row.items()
               if k not in ("key", "shard") and isinstance(v, (str, int, float, bool, np.number))]
    return c


def multiid_references(dataset_dir: str, rows) -> dict:
    """MultiID's card context: the reference thumbnails of the identities on these manifest rows,
    from OUT/multiid_refs beside the group photos (none when there is no bank beside it)."""
    from report.build import read_chosen, records
    from schemas.multiid import REFS_SCHEMA
    from schemas.reader import load_manifest

    refs_dir = dataset_dir.rstrip("/").rsplit("/", 1)[0] + "/" + REFS_SCHEMA.name
    try:
        refs = load_manifest(refs_dir)
    except Exception:  # noqa: BLE001 - no bank beside it: the report shows faces without references
        return {}
    wanted = {int(i) for r in records(rows) for i in r.get("identity") or [] if i >= 0}
    refs = refs[refs["identity_id"].isin(wanted)]
    refs = refs.sort_values("center_similarity", ascending=False).groupby("identity_id").head(REFS_PER_IDENTITY)
    found, _ = read_chosen(refs_dir, refs, REFS_SCHEMA)
    return {"refs": ref_pics(records(refs), {k: v[0] for k, v in found.items()})}


def ref_pics(refs_rows: list[dict], samples: dict[str, dict]) -> dict[int, list[Pic]]:
    """MultiID: identity -> thumbnails of its best references (highest cosine to the bank center)."""
    out: dict[int, list[Pic]] = {}
    for row in sorted(refs_rows, key=lambda r: -(r.get("center_similarity") or 0)):
        ident, sample = int(row["identity_id"]), samples.get(row["key"])
        if sample is None or "image" not in sample or len(out.get(ident, [])) >= REFS_PER_IDENTITY:
            continue
        out.setdefault(ident, []).append(Pic(f"cos {fmt(row.get('center_similarity'))}",
                                             data_uri(thumbnail(sample["image"], REF_THUMB)), hex_color(palette(ident))))
    return out
