"""Stand-in for Mailpit in the container check: accepts every message on SMTP port 1025 and
lists what it received on port 8025 (GET /api/v1/messages), in Mailpit's field names."""

import asyncio
import email
import email.policy
import json

MESSAGES = []


async def smtp(reader, writer):
    def say(line):
        writer.write(line.encode() + b"\r\n")

    say("220 mail-sink ESMTP")
    sender, recipients = "", []
    while line := await reader.readline():
        verb = line.decode(errors="replace").strip()
        upper = verb.upper()
        if upper.startswith(("EHLO", "HELO")):
            say("250-mail-sink")
            say("250 8BITMIME")
        elif upper.startswith("MAIL FROM:"):
            sender, recipients = verb[10:].strip(" <>"), []
            say("250 OK")
        elif upper.startswith("RCPT TO:"):
            recipients.append(verb[8:].strip(" <>"))
            say("250 OK")
        elif upper == "DATA":
            say("354 end with <CRLF>.<CRLF>")
            await writer.drain()
            data = b""
            while (chunk := await reader.readline()) not in (b".\r\n", b""):
                data += chunk[1:] if chunk.startswith(b"..") else chunk
            message = email.message_from_bytes(data, policy=email.policy.default)
            MESSAGES.append({
                "From": {"Address": sender},
                "To": [{"Address": r} for r in recipients],
                "Subject": str(message.get("Subject", "")),
            })
            print(f"mail-sink: message for {', '.join(recipients)}: {message.get('Subject')}", flush=True)
            say("250 OK queued")
        elif upper == "QUIT":
            say("221 bye")
            break
        else:
            say("250 OK")
        await writer.drain()
    writer.close()


async def http(reader, writer):
    request = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    if request.split(b" ")[1:2] == [b"/api/v1/messages"]:
        status, body = "200 OK", json.dumps({"total": len(MESSAGES), "messages": MESSAGES[::-1]})
    else:
        status, body = "404 Not Found", json.dumps({"error": "not found"})
    payload = body.encode()
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
    )
    await writer.drain()
    writer.close()


async def main():
    servers = [await asyncio.start_server(smtp, "0.0.0.0", 1025),
               await asyncio.start_server(http, "0.0.0.0", 8025)]
    print("mail-sink: SMTP on 1025, messages on 8025", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
