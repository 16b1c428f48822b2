"""The task_manager MCP server through the official SDK's client over real stdio."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from conftest import REPO, make_queue, write_task
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from hypervisor.frontends.mcp_server import TOOL_NAMES
from hypervisor.tasks import taskfile


def server_params(root, backend: str = "file") -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERVISOR_")}
    env["HYPERVISOR_BACKEND"] = backend
    return StdioServerParameters(
        command=sys.executable, args=[str(REPO / "scripts" / "launch.py"), "mcp", "--tasks", str(root)], env=env
    )


def structured(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def error_text(result) -> str:
    assert result.is_error, result
    return result.content[0].text


async def scenario(root, backend):
    async with Client(server_params(root, backend)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == set(TOOL_NAMES)
        for name, tool in tools.items():
            assert tool.description and len(tool.description) > 30, name
            for prop, schema in tool.input_schema.get("properties", {}).items():
                assert schema.get("description"), f"{name}.{prop} has no description"
        assert tools["list_tasks"].annotations.read_only_hint is True
        assert tools["get_task"].annotations.read_only_hint is True
        assert tools["claim_next_task"].annotations.read_only_hint is False

        listed = structured(await client.call_tool("list_tasks", {"ready": True}))
        assert [t["id"] for t in listed["tasks"]] == ["a", "b"]

        first = structured(await client.call_tool("claim_next_task", {"caller": "w1", "task_id": "a"}))
        token = first["claim_token"]
        refused = error_text(await client.call_tool("claim_next_task", {"caller": "w2", "task_id": "a"}))
        assert "already claimed by w1" in refused

        wrong = error_text(await client.call_tool("complete_task", {"id": "a", "claim_token": "bad", "summary": "x"}))
        assert "does not match the live claim" in wrong
        bad_id = error_text(await client.call_tool("get_task", {"id": "../etc/passwd"}))
        assert "is not allowed" in bad_id

        done = structured(
            await client.call_tool(
                "complete_task", {"id": "a", "claim_token": token, "summary": "wrote the thing", "commit": "abc1234"}
            )
        )
        assert done["status"] == "done"

        via_update = structured(
            await client.call_tool("update_task", {"id": "b", "caller": "w2", "status": "in_progress"})
        )
        assert via_update["claim_token"] and via_update["status"] == "in_progress"
        noted = structured(
            await client.call_tool(
                "update_task", {"id": "b", "claim_token": via_update["claim_token"], "note": "halfway", "priority": 0}
            )
        )
        assert noted["status"] == "in_progress"
        released = structured(await client.call_tool("release_task", {"id": "b", "caller": "w2"}))
        assert released["status"] == "active"
        empty = error_text(await client.call_tool("claim_next_task", {"caller": "w3", "batch": ["a"]}))
        assert "nothing to claim" in empty and "Stop" in empty

        stats = structured(await client.call_tool("get_index_stats", {"include_projects": True}))
        assert stats["by_status"]["done"] == 1 and "by_project" in stats
        task = structured(await client.call_tool("get_task", {"id": "a"}))
        assert task["status"] == "done" and "wrote the thing" in task["body"]


def test_mcp_server_over_stdio(root, backend):
    path_a = write_task(root, "a", status="active", priority=0, keep="me")
    path_b = write_task(root, "b", status="active", priority=1)
    asyncio.run(scenario(root, backend))
    data = taskfile.read_doc(str(path_a)).data
    assert data["status"] == "done" and data["commit"] == "abc1234" and data["keep"] == "me"
    assert "## Worker log" in path_a.read_text() and "wrote the thing" in path_a.read_text()
    doc_b = taskfile.read_doc(str(path_b))
    assert doc_b.data["priority"] == 0 and doc_b.data["status"] == "active" and "halfway" in doc_b.body


async def supervised_scenario(root, token: str, backend: str):
    params = server_params(root, backend)
    params.env.update(HYPERVISOR_TASK_ID="mine", HYPERVISOR_CLAIM_TOKEN=token, HYPERVISOR_WORKER="1")
    async with Client(params) as client:
        other = error_text(await client.call_tool("claim_next_task", {"caller": "model", "task_id": "other"}))
        assert "started by the hypervisor supervisor for task mine" in other
        handed = structured(await client.call_tool("claim_next_task", {"caller": "model"}))
        assert handed["id"] == "mine" and handed["claim_token"] == token and handed["status"] == "in_progress"
        again = structured(await client.call_tool("claim_next_task", {"caller": "model", "task_id": "mine"}))
        assert again["claim_token"] == token
        done = structured(
            await client.call_tool("complete_task", {"id": "mine", "claim_token": token, "summary": "ok"})
        )
        assert done["status"] == "done"
        lost = error_text(await client.call_tool("claim_next_task", {"caller": "model"}))
        assert "claim lost" in lost


def test_a_supervised_worker_is_handed_the_supervisors_claim(root, backend):
    write_task(root, "mine")
    write_task(root, "other")
    claim = make_queue(root, backend).claim_next("w1-abcd", task_id="mine")
    asyncio.run(supervised_scenario(root, claim["claim_token"], backend))
    assert taskfile.read_doc(str(root / "other.md")).data.get("status") is None  # never claimed
