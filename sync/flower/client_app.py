"""The box's Flower ClientApp: answers the coordinator's messages from the box's outbox (training already happened offline).

Flower starts a fresh ClientApp process for each message; the SuperNode's
``--node-config home=...`` says which box (``MAMMO_HOME``) it serves.  An
error inside becomes a Flower error reply, so the coordinator sees why and
asks again later; the outbox keeps the update either way.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from sync import box_side
from sync.flower.protocol import DecryptRequest, Poll

app = ClientApp()


def _home(context: Context) -> Path:
    return Path(str(context.node_config["home"]))


@app.query("sync")
def sync(msg: Message, context: Context) -> Message:
    reply = box_side.answer(_home(context), Poll.from_content(msg.content))
    return Message(reply.to_content(), reply_to=msg)


@app.query("decrypt")
def decrypt(msg: Message, context: Context) -> Message:
    reply = box_side.decrypt(_home(context), DecryptRequest.from_content(msg.content))
    return Message(reply.to_content(), reply_to=msg)
