"""`edgepart keys`: the workstation's bundle signing key and the signers a device trusts
(registered on `edgepart.cli.app`; docs/bundle-format.md, "Signature"). Public keys are printed in
full only where a person copies them; secrets never."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._cli import app, console, err_console
from ._cli import run as _run

keys_app = typer.Typer(no_args_is_help=True)
app.add_typer(
    keys_app,
    name="keys",
    help="Keys: `add-client` lets another app call a packaged cluster (its own link key); `signer` prints "
    "the workstation's public signing key, `trust` adds a signer to this device's trust store, `trusted` "
    "lists it. Devices load only bundles signed by a key they trust.",
)


@keys_app.command("add-client")
def add_client_cmd(
    dist: Path = typer.Argument(..., help="The dist/ folder `edgepart package` wrote."),
    name: str = typer.Option(..., "--name", help="The client's name: its key is written to DIST/NAME.key."),
    signing_key: Optional[Path] = typer.Option(None, "--signing-key", help="Sign the rewritten manifests with this key file (default: this workstation's own)."),
) -> None:
    """Make a link key for another app (DIST/NAME.key, 0600) and add its public key to every bundle's
    manifest, signed again; the models are untouched. Copy the manifests to the devices (restart
    their agents) and NAME.key to the app, which opens `InferenceSession(DIST, key="NAME.key")`."""

    def body():
        from edgepart.packager.seal import Sealing, add_client

        path, new = add_client(dist, name, Sealing(signing_key=signing_key))
        console.print(f"{'made' if new else 'kept'} {escape(str(path))} (mode 600) and added it to the bundles "
                      f"in {escape(str(dist))}: copy each dist/<device>/manifest.json to its device and restart "
                      f"its agent; give {path.name} to the app (key=\"{path.name}\" or --key).",
                      soft_wrap=True, highlight=False)

    _run(body)


@keys_app.command("signer")
def signer_cmd(
    signing_key: Optional[Path] = typer.Option(None, "--signing-key", help="The signing key file (default: signing.key in edgepart's config folder); made on first use."),
) -> None:
    """Print this workstation's public signing key and its fingerprint, making the key on first use."""

    def body():
        from .signing import fingerprint, load_or_create_signing_key, public_hex, signing_key_path

        path = signing_key if signing_key is not None else signing_key_path()
        made = not path.exists()
        pub = public_hex(load_or_create_signing_key(signing_key))
        if made:
            own = " and trusted by this machine" if signing_key is None else ""
            err_console.print(f"made a new signing key in {escape(str(path))} (mode 600: keep it secret, back it up){own}",
                              soft_wrap=True)
        console.print(pub, soft_wrap=True, highlight=False)
        console.print(f"fingerprint {fingerprint(pub)}", highlight=False)
        err_console.print(f"On each device: edgepart keys trust {pub} --name NAME", soft_wrap=True, highlight=False)

    _run(body)


@keys_app.command("trust")
def trust_cmd(
    key: str = typer.Argument(..., help="The signer's public key: 64 hex digits, as `edgepart keys signer` prints it."),
    name: str = typer.Option("", "--name", help="Who the key belongs to (a workstation's name), for `keys trusted`."),
) -> None:
    """Add a signer to this device's trust store: bundles it signs then load here."""

    def body():
        from .signing import fingerprint, trust, trust_store_path, trusted_signers

        new = trust(key, name)
        hex_key = key.strip().lower()
        label = escape(trusted_signers().get(hex_key, "") or "no name")
        verb = "now trusts" if new else "already trusted"
        console.print(f"this device {verb} signer {fingerprint(hex_key)} ({label}); "
                      f"trust store: {escape(str(trust_store_path()))}", soft_wrap=True, highlight=False)

    _run(body)


@keys_app.command("trusted")
def trusted_cmd() -> None:
    """List the signers this device trusts."""

    def body():
        from .signing import fingerprint, trust_store_path, trusted_signers

        found = trusted_signers()
        where = escape(str(trust_store_path()))
        if not found:
            console.print(f"this device trusts no signer yet ({where}): the first signed bundle it loads is "
                          f"trusted on first use, or run `edgepart keys trust KEY`.", soft_wrap=True)
            return
        table = Table(title=f"trusted signers ({where})", title_justify="left")
        table.add_column("fingerprint", no_wrap=True)
        table.add_column("name", overflow="fold")
        table.add_column("public key", no_wrap=True, min_width=64)
        for hex_key, who in sorted(found.items(), key=lambda kv: (kv[1], kv[0])):
            table.add_row(fingerprint(hex_key), escape(who), hex_key)
        # never cut a key people copy: wider than the terminal if need be (the terminal wraps the lines)
        width = max(console.width, 16 + 64 + max(4, *(len(w) for w in found.values())) + 10)
        wide = Console(file=console.file, width=width, color_system=console.color_system,
                       force_terminal=console.is_terminal, highlight=False)
        wide.print(table)

    _run(body)
