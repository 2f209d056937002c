"""The licence and citation files: the licence pyproject declares, a valid CITATION.cff
(the required keys of CFF 1.2.0) that cites both methods' papers."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import diffdass

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_license() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^license\s*=\s*\{\s*text\s*=\s*"([^"]+)"', text, re.M).group(1)


def test_license_is_the_full_apache_2_text_pyproject_declares():
    assert _pyproject_license() == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert " ".join(text.split()[:4]) == "Apache License Version 2.0,"
    for part in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                 "9. Accepting Warranty or Additional Liability.",
                 "END OF TERMS AND CONDITIONS"):  # fmt: skip
        assert part in text, part


def _check_authors(authors):
    assert isinstance(authors, list) and authors
    for a in authors:
        assert a.get("name") or a.get("family-names"), a


def test_citation_cff_is_valid_and_cites_both_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # required by CFF 1.2.0
        assert cff.get(key), key
    _check_authors(cff["authors"])
    assert cff["type"] == "software" and cff["title"].startswith("diffdass")
    assert cff["license"] == _pyproject_license()
    assert str(cff["version"]) == diffdass.__version__
    refs = {r["title"]: r for r in cff["references"]}
    for ref in refs.values():
        assert ref["type"] and ref["title"]
        _check_authors(ref["authors"])
    peng = refs[
        "Diffusion-based Image Translation with Label Guidance for Domain Adaptive Semantic"
        " Segmentation"
    ]
    assert [a["family-names"] for a in peng["authors"]] == ["Peng", "Hu", "Ke", "Liu"]
    assert peng["year"] == 2023 and "ICCV" in peng["conference"]["name"]
    cicld = refs[
        "Adversarial Diffusion Model for Unsupervised Domain-Adaptive Semantic Segmentation"
    ]
    assert [a["family-names"] for a in cicld["authors"]] == ["Yu", "Sun", "Luo"]
    assert "CICLD" in cicld["abstract"]
