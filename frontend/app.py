"""The Gradio page: sign-in, console, workspace, sandbox facts and, for operators, the tenant's sandboxes.

Gradio is imported here only (the `ui` extra); its analytics and Hugging Face telemetry are switched
off before it loads, it serves every asset itself (system fonts, no CDN), and it makes no share link.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI

from frontend.config import UiConfig
from frontend.handlers import Handlers
from frontend.signin_routes import HANDOFF_COOKIE, SignInRoutes
from policy.model import TOOL_NAMES

__all__ = ["build", "launch"]

#: How long a session's token is kept in server memory at most (Gradio drops it sooner when the page closes).
TOKEN_TTL_S = 8 * 3600
#: Largest upload the page accepts (the gateway's own input cap applies too).
MAX_UPLOAD = "16mb"

_CSS = """
.oauth-sign-in { display: block; text-align: center; padding: 4px; border-radius: 6px;
  background: var(--button-secondary-background-fill); color: var(--button-secondary-text-color); }
#run-output textarea, #run-stderr textarea, #file-view textarea { font-family: ui-monospace, monospace; }
"""

_PRIVATE: dict[str, Any] = {"api_visibility": "private"}


def _theme() -> gr.themes.Base:
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def build(url: str, signin: SignInRoutes | None = None) -> gr.Blocks:
    """The page for the gateway at `url`; with `signin`, also a button that signs in through the
    gateway's OAuth issuer."""
    actions = Handlers(url)

    app = gr.Blocks(title="Sandbox Gateway", analytics_enabled=False, delete_cache=(900, 3600))
    with app:
        token = gr.State(None, time_to_live=TOKEN_TTL_S)
        gr.Markdown("## Sandbox Gateway", elem_id="title")
        with gr.Row(elem_id="sign-in-row"):
            token_box = gr.Textbox(
                label="Gateway token", type="password", placeholder="sgw_...", elem_id="token-input", scale=4
            )
            sign_in = gr.Button("Sign in", variant="primary", elem_id="sign-in", scale=1)
            sign_out = gr.Button("Sign out", elem_id="sign-out", scale=1)
        if signin is not None:
            # A plain link: it works before the page's scripts have loaded, and carries nothing but the path.
            gr.HTML(
                '<a id="oauth-sign-in" href="/oauth/login" class="oauth-sign-in">'
                "Sign in through your organization's issuer (OAuth)</a>",
                elem_id="oauth-sign-in-box",
            )
        who = gr.Markdown("Not signed in.", elem_id="signed-in-as")

        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Console", id="console", elem_id="tab-console"):
                with gr.Row():
                    language = gr.Radio(
                        ["python", "bash"], value="python", label="Language", elem_id="language"
                    )
                    timeout = gr.Number(
                        value=30, label="Timeout (s)", minimum=1, precision=0, elem_id="timeout"
                    )
                code = gr.Textbox(label="Code", lines=8, max_lines=40, elem_id="code-input")
                run = gr.Button("Run", variant="primary", elem_id="run-button")
                run_status = gr.Markdown(elem_id="run-status")
                output = gr.Textbox(
                    label="Output",
                    lines=12,
                    max_lines=30,
                    interactive=False,
                    autoscroll=True,
                    elem_id="run-output",
                )
                stderr = gr.Textbox(
                    label="stderr", lines=3, max_lines=20, interactive=False, elem_id="run-stderr"
                )

            with gr.Tab("Workspace", id="workspace", elem_id="tab-workspace"):
                with gr.Row():
                    directory = gr.Textbox(
                        value="/workspace", label="Directory", elem_id="files-path", scale=4
                    )
                    list_button = gr.Button("List", elem_id="files-refresh", scale=1)
                files = gr.Markdown(elem_id="files-table")
                upload = gr.File(label="Upload into this directory", type="filepath", elem_id="upload-file")
                with gr.Row():
                    chosen = gr.Dropdown(
                        choices=[], label="File", allow_custom_value=True, elem_id="file-select"
                    )
                    view_button = gr.Button("View", elem_id="file-view-button")
                    download_button = gr.Button("Download", elem_id="file-download-button")
                files_status = gr.Markdown(elem_id="files-status")
                downloaded = gr.File(label="Downloaded file", interactive=False, elem_id="download-file")
                viewer = gr.Textbox(
                    label="Content", lines=10, max_lines=40, interactive=False, elem_id="file-view"
                )

            with gr.Tab("Sandbox", id="sandbox", elem_id="tab-sandbox"):
                with gr.Row():
                    info_button = gr.Button("Refresh", elem_id="info-refresh")
                    reset_button = gr.Button("Reset sandbox", variant="stop", elem_id="reset-button")
                sandbox_status = gr.Markdown(elem_id="sandbox-status")
                facts = gr.Markdown(elem_id="sandbox-info")
                gr.Markdown("### Skills (`/skills`)")
                skills = gr.Markdown(elem_id="skills-table")
                gr.Markdown("### Tools (`/tools`)")
                tools = gr.Markdown(elem_id="tools-table")

            with gr.Tab("Operator", id="operator", elem_id="tab-operator"):
                gr.Markdown("Needs a token with the `sandbox:admin` scope; shows your tenant only.")
                admin_button = gr.Button("Refresh", elem_id="admin-refresh")
                admin_status = gr.Markdown(elem_id="admin-status")
                admin_table = gr.Markdown(elem_id="admin-table")
                with gr.Row():
                    victim = gr.Dropdown(
                        choices=[], label="Principal", interactive=True, elem_id="admin-select"
                    )
                    remove_button = gr.Button("Remove sandbox...", variant="stop", elem_id="admin-remove")
                with gr.Row(visible=False, elem_id="admin-confirm-row") as confirm_row:
                    confirm_text = gr.Markdown(elem_id="admin-confirm-text")
                    confirm = gr.Button("Yes, remove it", variant="stop", elem_id="admin-confirm")
                    cancel = gr.Button("Cancel", elem_id="admin-cancel")
                gr.Markdown("### Policy in force")
                with gr.Row():
                    explain_principal = gr.Textbox(
                        label="Explain for principal (optional)", elem_id="explain-principal"
                    )
                    explain_tool = gr.Dropdown(
                        choices=["", *sorted(TOOL_NAMES)], value="", label="and tool", elem_id="explain-tool"
                    )
                    policy_button = gr.Button("Show policy", elem_id="policy-show")
                policy_view = gr.Markdown(elem_id="operator-policy")

        # Sign-in and out: the token lives in this session's state only; the box is cleared at once.
        async def do_sign_in(raw: str) -> tuple[Any, ...]:
            result = await actions.sign_in(raw)
            return result.token, "", result.who, result.facts

        sign_in.click(do_sign_in, [token_box], [token, token_box, who, facts], **_PRIVATE)
        token_box.submit(do_sign_in, [token_box], [token, token_box, who, facts], **_PRIVATE)

        if signin is not None:

            async def on_load(request: gr.Request) -> tuple[Any, ...]:
                """A token the OAuth callback left for this browser moves into this session's state."""
                handoff = signin.handoffs.claim(request.cookies.get(HANDOFF_COOKIE))
                result = await actions.sign_in_handoff(handoff)
                if result is None:
                    return gr.skip(), gr.skip(), gr.skip()
                return result.token, result.who, result.facts

            app.load(on_load, None, [token, who, facts], **_PRIVATE)

        def do_sign_out() -> tuple[Any, ...]:
            return None, "Signed out.", "", "", "", "", "", "", ""

        sign_out.click(
            do_sign_out,
            None,
            [token, who, facts, skills, tools, files, output, stderr, admin_table],
            **_PRIVATE,
        )

        async def do_run(
            tok: str | None, lang: str, src: str, limit: float | None
        ) -> AsyncIterator[tuple[str, str, str]]:
            async for update in actions.run(tok, lang, src, limit):
                yield update.status, update.output, update.stderr

        run.click(
            do_run,
            [token, language, code, timeout],
            [run_status, output, stderr],
            show_progress="minimal",
            **_PRIVATE,
        )

        async def do_list(tok: str | None, path: str) -> tuple[Any, ...]:
            table, choices, status = await actions.list_files(tok, path)
            return table, gr.update(choices=choices, value=choices[0] if choices else None), status

        list_button.click(do_list, [token, directory], [files, chosen, files_status], **_PRIVATE)

        async def do_upload(tok: str | None, local: str | None, path: str) -> tuple[Any, ...]:
            status, written = await actions.upload(tok, local, path)
            table, choices, problem = await actions.list_files(tok, path)
            chosen = written if written in choices else None
            return (
                status + (f" {problem}" if problem else ""),
                table,
                gr.update(choices=choices, value=chosen),
                None,
            )

        upload.upload(
            do_upload, [token, upload, directory], [files_status, files, chosen, upload], **_PRIVATE
        )
        view_button.click(actions.view, [token, chosen], [viewer, files_status], **_PRIVATE)
        download_button.click(actions.download, [token, chosen], [downloaded, files_status], **_PRIVATE)

        async def do_sandbox(tok: str | None) -> tuple[str, str, str, str]:
            return await actions.sandbox(tok)

        info_button.click(do_sandbox, [token], [facts, skills, tools, sandbox_status], **_PRIVATE)

        async def do_reset(tok: str | None) -> tuple[str, str]:
            status = await actions.reset(tok)
            info, _, _, problem = await actions.sandbox(tok)
            return status, info or problem

        reset_button.click(do_reset, [token], [sandbox_status, facts], **_PRIVATE)

        async def do_admin_list(tok: str | None) -> tuple[Any, ...]:
            table, choices, status = await actions.admin_list(tok)
            return table, gr.update(choices=choices, value=None), status, gr.update(visible=False)

        admin_button.click(
            do_admin_list, [token], [admin_table, victim, admin_status, confirm_row], **_PRIVATE
        )

        def ask(principal: str | None) -> tuple[Any, ...]:
            if not principal:
                return gr.update(visible=False), "", "Choose a principal first."
            text = f"Remove the sandbox of **{principal}**? Its running commands stop and its files are lost."
            return gr.update(visible=True), text, ""

        remove_button.click(ask, [victim], [confirm_row, confirm_text, admin_status], **_PRIVATE)
        cancel.click(
            lambda: (gr.update(visible=False), "Nothing removed."),
            None,
            [confirm_row, admin_status],
            **_PRIVATE,
        )

        policy_button.click(
            actions.admin_policy, [token, explain_principal, explain_tool], [policy_view], **_PRIVATE
        )

        async def do_remove(tok: str | None, principal: str | None) -> tuple[Any, ...]:
            status = await actions.admin_remove(tok, principal)
            table, choices, problem = await actions.admin_list(tok)
            return (
                gr.update(visible=False),
                status + (f" {problem}" if problem else ""),
                table,
                gr.update(choices=choices, value=None),
            )

        confirm.click(
            do_remove, [token, victim], [confirm_row, admin_status, admin_table, victim], **_PRIVATE
        )
    return app


def launch(config: UiConfig) -> None:
    """Serve the page on `config.host:config.port`, with the OAuth routes when configured (no share
    link, no API page, no monitoring, no access log: the OAuth callback's URL carries a code)."""
    signin = SignInRoutes(config.gateway_url, config.oauth) if config.oauth is not None else None
    server = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for route in signin.routes() if signin is not None else ():
        server.router.routes.append(route)
    page = build(config.gateway_url, signin)
    page.queue(default_concurrency_limit=32)
    gr.mount_gradio_app(
        server,
        page,
        path="",
        show_error=False,
        footer_links=[],
        enable_monitoring=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        max_file_size=MAX_UPLOAD,
        theme=_theme(),
        css=_CSS,
    )
    uvicorn.run(server, host=config.host, port=config.port, log_level="warning", access_log=False)
