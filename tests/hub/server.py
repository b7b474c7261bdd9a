"""A Hub-compatible HTTP server on loopback for tests (models and datasets, no Xet).

It implements the routes ``huggingface_hub`` 2.x, ``transformers`` and ``datasets`` use to
create repos, commit files (regular and LFS), and read them back: repo info, tree,
paths-info and ``resolve`` downloads with the ``X-Repo-Commit`` / ``ETag`` headers the cache
relies on. Every commit gets a new sha, so a second push is visible to the next download.

Repos and LFS objects live in a temporary folder. Write routes need a bearer token (any
value); private repos answer 401 to requests without one, as the Hub does. Every request is
appended to ``HubServer.requests`` as ``(method, path, json_body_or_None)`` so tests can
check what the clients sent.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub's default .gitattributes sends to LFS; anything larger than LFS_MIN_SIZE too.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".npy", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Blob:
    """A file of a commit: its content's sha256 and size, and whether it is stored in LFS."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str = ""  # git blob sha1 of the content; set for regular files

    @property
    def oid(self) -> str:
        """The git oid: of the content for regular files, of the pointer file for LFS files."""
        return git_blob_oid(lfs_pointer(self.sha256, self.size)) if self.lfs else self.git_oid

    @property
    def upload_oid(self) -> str:
        """What the client compares to decide a file is unchanged: sha256 (LFS) or git sha1."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """The commit sha of a branch name or (a prefix of) a commit sha."""
        if revision in self.branches:
            return self.branches[revision]
        if len(revision) >= 7:
            matches = [sha for sha in self.commits if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HubStore:
    """Repos, commits and content-addressed blobs on disk."""

    def __init__(self, root: str):
        self.root = root
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()
        self._counter = itertools.count()
        os.makedirs(os.path.join(root, "objects"), exist_ok=True)

    def object_path(self, sha256: str) -> str:
        return os.path.join(self.root, "objects", sha256)

    def has_object(self, sha256: str) -> bool:
        return os.path.exists(self.object_path(sha256))

    def put_object(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self.object_path(sha256)
        if not os.path.exists(path):
            tmp = f"{path}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        return sha256

    def read_object(self, sha256: str) -> bytes:
        with open(self.object_path(sha256), "rb") as f:
            return f.read()

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, None, "You already created this repo")
            repo = Repo(repo_type, repo_id, private)
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", {}, {".gitattributes": self._regular(GITATTRIBUTES)}, set())
            return repo

    def _regular(self, content: bytes) -> Blob:
        return Blob(self.put_object(content), len(content), lfs=False, git_oid=git_blob_oid(content))

    def _commit(self, repo: Repo, branch: str, base: dict, added: dict, deleted: set) -> str:
        files = {p: b for p, b in base.items() if p not in deleted and not any(p.startswith(d + "/") for d in deleted)}
        files.update(added)
        sha = hashlib.sha1(f"{repo.repo_id}:{next(self._counter)}:{time.time_ns()}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha

    def commit(self, repo: Repo, branch: str, operations: list[dict], parent: str | None) -> str:
        """Apply NDJSON commit operations on top of ``branch``; returns the new commit sha."""
        added: dict[str, Blob] = {}
        deleted: set[str] = set()
        for op in operations:
            key, value = op["key"], op["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')!r}")
                added[value["path"]] = self._regular(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if not self.has_object(value["oid"]):
                    raise HubError(422, None, f"LFS object {value['oid']} was not uploaded")
                size = os.path.getsize(self.object_path(value["oid"]))
                added[value["path"]] = Blob(value["oid"], size, lfs=True)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.add(value["path"].rstrip("/"))
            else:
                raise HubError(400, None, f"unknown commit operation {key!r}")
        with self.lock:
            head = repo.branches.get(branch)
            if head is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            if parent is not None and not head.startswith(parent):
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            base = repo.commits[head]
            missing = [p for p in deleted if p not in base and not any(f.startswith(p + "/") for f in base)]
            if missing:
                raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {missing[0]}")
            return self._commit(repo, branch, base, added, deleted)


def _entry(path: str, blob: Blob | None) -> dict:
    if blob is None:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
    entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(lfs_pointer(blob.sha256, blob.size))}
    return entry


def list_tree(files: dict[str, Blob], folder: str, recursive: bool) -> list[dict] | None:
    """Entries under ``folder`` ("" for the root); None when the folder does not exist."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    entries: dict[str, dict] = {}
    for path, blob in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for depth in range(1, len(parts)):
            sub = prefix + "/".join(parts[:depth])
            entries.setdefault(sub, _entry(sub, None))
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entries[path] = _entry(path, blob)
    if prefix and not entries:
        return None
    return list(entries.values())


def path_info(files: dict[str, Blob], path: str) -> dict | None:
    path = path.strip("/")
    if path in files:
        return _entry(path, files[path])
    if any(p.startswith(path + "/") for p in files):
        return _entry(path, None)
    return None


REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+?)"
API = rf"/api/(?P<type>models|datasets)/{REPO}"  # JSON API of one repo
GIT = rf"/(?P<prefix>datasets/)?{REPO}"  # file and git routes of one repo
REV = r"(?P<rev>[^/]+)"
ROUTES = [(method, re.compile(f"^{pattern}$"), name) for method, pattern, name in [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"{API}(?:/revision/{REV})?", "repo_info"),
    ("POST", rf"{API}/preupload/{REV}", "preupload"),
    ("POST", rf"{API}/commit/{REV}", "commit"),
    ("POST", rf"{API}/branch/(?P<branch>[^/]+)", "create_branch"),
    ("GET", rf"{API}/tree/{REV}(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"{API}/paths-info/{REV}", "paths_info"),
    ("POST", rf"{GIT}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/__lfs__/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("GET", rf"{GIT}/resolve/{REV}/(?P<path>.+)", "resolve"),  # HEAD too: same headers, no body
]]


class HubHandler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean; requests are in server.requests
        pass

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.body = self._read_chunked()
        logged = None
        if self.headers.get("Content-Type", "").startswith("application/json") or method == "POST":
            try:
                logged = json.loads(self.body) if self.body else None
            except ValueError:
                logged = None
        self.server.requests.append((method, url.path, logged))
        for route_method, pattern, name in ROUTES:
            match = pattern.match(url.path)
            if match and route_method == ("GET" if method == "HEAD" else method):
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    getattr(self, "route_" + name)(**params)
                except HubError as err:
                    self._send_error(err)
                return
        self._send_error(HubError(404, None, f"no route for {method} {url.path}"))

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(data).encode(), headers)

    def _send_error(self, err: HubError):
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, headers)

    @property
    def _authenticated(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _require_token(self) -> None:
        if not self._authenticated:
            raise HubError(401, None, "Invalid username or password.")

    def _repo(self, type_or_prefix: str | None, ns: str, name: str) -> Repo:
        repo_type = "dataset" if type_or_prefix in ("datasets", "datasets/") else "model"
        repo = self.server.store.repo(repo_type, f"{ns}/{name}")
        if repo.private and not self._authenticated:
            # The Hub answers 401 for private repos without a token, like for missing ones.
            raise HubError(401, "RepoNotFound", f"Repository {repo.repo_id} not found")
        return repo

    def _files(self, repo: Repo, rev: str) -> tuple[str, dict[str, Blob]]:
        sha = repo.resolve(rev)
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha, repo.commits[sha]

    @property
    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ routes

    def route_create_repo(self):
        self._require_token()
        payload = json.loads(self.body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        prefix = "datasets/" if repo_type == "dataset" else ""
        url = f"{self._base_url}/{prefix}{repo_id}"
        try:
            self.server.store.create_repo(repo_type, repo_id, private)
        except HubError as err:  # the Hub's 409 names the existing repo; create_repo(exist_ok=True) reads it
            self._json({"error": err.message, "url": url}, err.status, {"X-Error-Message": err.message})
            return
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def route_validate_yaml(self):
        self._json({"errors": [], "warnings": []})

    def route_repo_info(self, type, ns, name, rev="main"):
        repo = self._repo(type, ns, name)
        sha, files = self._files(repo, rev)
        self._json({
            "id": repo.repo_id, "_id": repo.repo_id, "author": ns, "sha": sha, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(files)],
        })

    def route_preupload(self, type, ns, name, rev):
        self._require_token()
        repo = self._repo(type, ns, name)
        head = repo.resolve(rev)
        files = repo.commits[head] if head else {}
        out = []
        for f in json.loads(self.body)["files"]:
            lfs = f["size"] >= LFS_MIN_SIZE or f["path"].lower().endswith(LFS_SUFFIXES)
            existing = files.get(f["path"])  # the client skips files whose oid did not change
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": existing.upload_oid if existing else None})
        self._json({"files": out, "commitOid": head})

    def route_commit(self, type, ns, name, rev):
        self._require_token()
        repo = self._repo(type, ns, name)
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, None, "the first NDJSON line must be the commit header")
        sha = self.server.store.commit(repo, rev, lines[1:], lines[0]["value"].get("parentCommit"))
        prefix = "datasets/" if repo.repo_type == "dataset" else ""
        self._json({"success": True, "commitOid": sha, "pullRequestUrl": None,
                    "commitUrl": f"{self._base_url}/{prefix}{repo.repo_id}/commit/{sha}"})

    def route_create_branch(self, type, ns, name, branch):
        self._require_token()
        repo = self._repo(type, ns, name)
        payload = json.loads(self.body) if self.body else {}
        with self.server.store.lock:
            if branch in repo.branches:
                raise HubError(409, None, f"Reference already exists: refs/heads/{branch}")
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                raise HubError(404, "RevisionNotFound", "Invalid starting point")
            repo.branches[branch] = start
        self._json({})

    def route_tree(self, type, ns, name, rev, path=""):
        repo = self._repo(type, ns, name)
        _, files = self._files(repo, rev)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = list_tree(files, path, recursive)
        if entries is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        self._json(entries)

    def route_paths_info(self, type, ns, name, rev):
        repo = self._repo(type, ns, name)
        _, files = self._files(repo, rev)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(self.body).get("paths", [])
        else:
            paths = parse_qs(self.body.decode()).get("paths", [])
        self._json([info for p in paths if (info := path_info(files, p)) is not None])

    def route_lfs_batch(self, ns, name, prefix=None):
        self._require_token()
        self._repo(prefix, ns, name)
        payload = json.loads(self.body)
        if payload.get("operation") != "upload":
            raise HubError(400, None, "only uploads go through this server's LFS batch API")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.server.store.has_object(obj["oid"]):
                entry["actions"] = {"upload": {"href": f"{self._base_url}/__lfs__/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def route_lfs_put(self, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, None, "uploaded content does not match its oid")
        self.server.store.put_object(self.body)
        self._send(200)

    def route_resolve(self, ns, name, rev, path, prefix=None):
        repo = self._repo(prefix, ns, name)
        sha, files = self._files(repo, rev)
        blob = files.get(path)
        if blob is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        content = self.server.store.read_object(blob.sha256)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.sha256 if blob.lfs else blob.git_oid}"',
                   "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        status = 200
        match = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1)) if match.group(1) else max(0, len(content) - int(match.group(2)))
            end = int(match.group(2)) if match.group(1) and match.group(2) else len(content) - 1
            end = min(end, len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, headers, content_type="application/octet-stream")


class HubServer(ThreadingHTTPServer):
    """The server; ``with HubServer() as hub:`` runs it in a daemon thread on a free port."""

    daemon_threads = True

    def __init__(self, root: str | None = None):
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="d3hf-hub-")
        self.store = HubStore(root or self._tmp.name)
        self.requests: list[tuple[str, str, object]] = []
        super().__init__(("127.0.0.1", 0), HubHandler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
