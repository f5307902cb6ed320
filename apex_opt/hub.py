"""Models named by their Hugging Face id (``meta-llama/Llama-3.1-70B-Instruct``).

A known id (a catalog model's ``hf_repo`` or one of its ``hf_aliases``, any case) is that catalog model; see
:func:`apex_opt.catalog.get_model`. Any other id has its ``config.json`` fetched with ``huggingface_hub`` (the
optional extra ``pip install 'apex-opt[hf]'``) through the Hub's own cache, so ``HF_HOME``, ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE`` work as they do for vLLM and transformers. Whatever stops the fetch (no ``huggingface_hub``,
offline with nothing cached, a gated or unknown repository) is one :class:`SpecError` that says how to pass a
local ``config.json`` instead.

>>> is_repo_id("meta-llama/Llama-3.1-70B-Instruct"), is_repo_id("specs/models/llama-3.1-8b.json")
(True, False)
>>> display_name("Qwen/Qwen2.5-7B-Instruct")
'qwen2.5-7b-instruct'
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import SpecError, shorten

#: ``org/name`` as the Hub spells repository ids (letters, digits, ``-``, ``_``, ``.``; at most 96 characters)
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def is_repo_id(ref: str) -> bool:
    """Whether ``ref`` reads as a Hub repository id rather than a file path."""
    return (isinstance(ref, str) and len(ref) <= 96 and _REPO_ID.fullmatch(ref) is not None
            and not ref.lower().endswith(_FILE_SUFFIXES) and ".." not in ref and "--" not in ref)


def display_name(repo_id: str) -> str:
    """The name apex-opt gives a model fetched by id: the id's last part, lower-cased."""
    return repo_id.rsplit("/", 1)[-1].lower()


def _offline() -> bool:
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _local_way(repo_id: str) -> str:
    """The closing sentences of every fetch error: how to give the config as a file instead."""
    folder = display_name(repo_id)
    fetch = f"download {repo_id} config.json --local-dir {folder}"
    return (f"To use a local copy instead, pass {{model=}}path/to/config.json (the model's Hugging Face config.json), "
            f"e.g. after 'hf {fetch}' (before huggingface_hub 1.0: 'huggingface-cli {fetch}') on a machine that can "
            f"reach the Hub: {{model=}}{folder}/config.json. Catalog models need no download (apex-opt catalog "
            "models).")


def fetch_config(repo_id: str) -> Path:
    """The local path of ``repo_id``'s ``config.json``, from the Hub's cache or downloaded into it.

    Raises
    ------
    SpecError
        ``huggingface_hub`` is not installed, the Hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) and the file
        is not cached, the repository is gated or private (401/403), or it or its ``config.json`` does not exist.
    """
    what = (f"{{model=}}{shorten(repo_id)}: neither a catalog model nor a file or folder here, so apex-opt reads it as "
            "a Hugging Face id and fetches its config.json from the Hub")
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise SpecError(f"{what}, but the huggingface_hub package is not installed (pip install 'apex-opt[hf]'). "
                        f"{_local_way(repo_id)}", option="model") from None
    offline = _offline()
    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=offline))
    except GatedRepoError:
        reason = ("the repository is gated: accept its licence on its Hub page, log in (hf auth login, or "
                  "set HF_TOKEN) and try again")
    except RepositoryNotFoundError:
        reason = ("the Hub has no such repository (401/404: the id is misspelt, or the repository is private and "
                  "you are not logged in)")
    except LocalEntryNotFoundError:
        reason = (f"the file is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                  + ("HF_HUB_OFFLINE is set, so the Hub was not asked" if offline else "the Hub could not be reached"))
    except EntryNotFoundError:
        reason = "the repository has no config.json (is it a model in the transformers format?)"
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            reason = (f"the Hub refused access ({status}): the repository is gated or private; log in "
                      "(hf auth login, or set HF_TOKEN) with an account that has access and try again")
        else:
            reason = f"the Hub answered with an error ({status or 'HTTP'}: {_first_line(exc)})"
    except (OSError, ValueError) as exc:  # a malformed id, an unwritable cache, a network failure
        reason = f"the fetch failed ({type(exc).__name__}: {_first_line(exc)})"
    raise SpecError(f"{what}, but {reason}. {_local_way(repo_id)}", option="model")


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a Hub error, if it carries its response."""
    try:
        return int(exc.response.status_code)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no response, or one without a status: say "HTTP"
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else "no message"
    return line if len(line) <= 120 else line[:117] + "..."


__all__ = ["display_name", "fetch_config", "is_repo_id"]
