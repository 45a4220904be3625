from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("protocol_version", "capabilities", "hostname", "machine_id", "agent_version", "e2e_key")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    E2E_KEY_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    hostname: str
    machine_id: str
    agent_version: str
    e2e_key: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., hostname: _Optional[str] = ..., machine_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., e2e_key: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "machine", "workspace", "capabilities", "ping_s")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PING_S_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    machine: str
    workspace: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    ping_s: int
    def __init__(self, protocol_version: _Optional[int] = ..., machine: _Optional[str] = ..., workspace: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., ping_s: _Optional[int] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("kind", "workspace", "name", "credential", "hostname", "machine_id", "share_id", "tools", "note")
    KIND_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARE_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    workspace: str
    name: str
    credential: str
    hostname: str
    machine_id: str
    share_id: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    note: str
    def __init__(self, kind: _Optional[str] = ..., workspace: _Optional[str] = ..., name: _Optional[str] = ..., credential: _Optional[str] = ..., hostname: _Optional[str] = ..., machine_id: _Optional[str] = ..., share_id: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ...) -> None: ...

class CallStart(_message.Message):
    __slots__ = ("call_id", "host", "tool", "input_json", "deadline_ms", "stream", "caller", "cwd", "session", "sealed")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    host: str
    tool: str
    input_json: bytes
    deadline_ms: int
    stream: bool
    caller: Principal
    cwd: str
    session: str
    sealed: bytes
    def __init__(self, call_id: _Optional[str] = ..., host: _Optional[str] = ..., tool: _Optional[str] = ..., input_json: _Optional[bytes] = ..., deadline_ms: _Optional[int] = ..., stream: _Optional[bool] = ..., caller: _Optional[_Union[Principal, _Mapping]] = ..., cwd: _Optional[str] = ..., session: _Optional[str] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("call_id", "fd", "data")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    FD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    fd: int
    data: bytes
    def __init__(self, call_id: _Optional[str] = ..., fd: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("call_id", "bytes")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    bytes: int
    def __init__(self, call_id: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("call_id", "result_json")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    result_json: bytes
    def __init__(self, call_id: _Optional[str] = ..., result_json: _Optional[bytes] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("call_id", "reason")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    reason: str
    def __init__(self, call_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("call_id", "code", "message", "hint")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    code: str
    message: str
    hint: str
    def __init__(self, call_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., hint: _Optional[str] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("call_id", "machine")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    machine: str
    def __init__(self, call_id: _Optional[str] = ..., machine: _Optional[str] = ...) -> None: ...

class Reauth(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class AgentFrame(_message.Message):
    __slots__ = ("hello", "accepted", "chunk", "result", "failure", "pong", "call", "cancel", "credit", "reauth", "key_query")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    REAUTH_FIELD_NUMBER: _ClassVar[int]
    KEY_QUERY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    accepted: Accepted
    chunk: Chunk
    result: Result
    failure: Failure
    pong: Ping
    call: CallStart
    cancel: Cancel
    credit: Credit
    reauth: Reauth
    key_query: HostKeyRequest
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., pong: _Optional[_Union[Ping, _Mapping]] = ..., call: _Optional[_Union[CallStart, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., reauth: _Optional[_Union[Reauth, _Mapping]] = ..., key_query: _Optional[_Union[HostKeyRequest, _Mapping]] = ...) -> None: ...

class RelayFrame(_message.Message):
    __slots__ = ("welcome", "call", "cancel", "credit", "ping", "event", "failure", "key_answer")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ANSWER_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    call: CallStart
    cancel: Cancel
    credit: Credit
    ping: Ping
    event: CallEvent
    failure: Failure
    key_answer: HostKeyReply
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., call: _Optional[_Union[CallStart, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., event: _Optional[_Union[CallEvent, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., key_answer: _Optional[_Union[HostKeyReply, _Mapping]] = ...) -> None: ...

class CallerFrame(_message.Message):
    __slots__ = ("start", "cancel")
    START_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    start: CallStart
    cancel: Cancel
    def __init__(self, start: _Optional[_Union[CallStart, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ...) -> None: ...

class CallEvent(_message.Message):
    __slots__ = ("accepted", "chunk", "result", "failure")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    chunk: Chunk
    result: Result
    failure: Failure
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("name", "hostname", "online", "agent_version", "last_seen")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    hostname: str
    online: bool
    agent_version: str
    last_seen: str
    def __init__(self, name: _Optional[str] = ..., hostname: _Optional[str] = ..., online: _Optional[bool] = ..., agent_version: _Optional[str] = ..., last_seen: _Optional[str] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListHostsReply(_message.Message):
    __slots__ = ("hosts", "total")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[HostInfo]
    total: int
    def __init__(self, hosts: _Optional[_Iterable[_Union[HostInfo, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ShareInfo(_message.Message):
    __slots__ = ("id", "host", "note", "created", "expires", "uses", "max_uses", "tools", "state", "token")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    note: str
    created: str
    expires: str
    uses: int
    max_uses: int
    tools: _containers.RepeatedScalarFieldContainer[str]
    state: str
    token: str
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., note: _Optional[str] = ..., created: _Optional[str] = ..., expires: _Optional[str] = ..., uses: _Optional[int] = ..., max_uses: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class CreateShareRequest(_message.Message):
    __slots__ = ("host", "ttl_s", "no_expiry", "tools", "max_uses", "note")
    HOST_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    NO_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    host: str
    ttl_s: int
    no_expiry: bool
    tools: _containers.RepeatedScalarFieldContainer[str]
    max_uses: int
    note: str
    def __init__(self, host: _Optional[str] = ..., ttl_s: _Optional[int] = ..., no_expiry: _Optional[bool] = ..., tools: _Optional[_Iterable[str]] = ..., max_uses: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class ListSharesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSharesReply(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[ShareInfo]
    def __init__(self, shares: _Optional[_Iterable[_Union[ShareInfo, _Mapping]]] = ...) -> None: ...

class RevokeShareRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class HostKeyRequest(_message.Message):
    __slots__ = ("host", "query_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    query_id: str
    def __init__(self, host: _Optional[str] = ..., query_id: _Optional[str] = ...) -> None: ...

class HostKeyReply(_message.Message):
    __slots__ = ("query_id", "name", "machine_id", "e2e_key", "failure")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    E2E_KEY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    name: str
    machine_id: str
    e2e_key: bytes
    failure: Failure
    def __init__(self, query_id: _Optional[str] = ..., name: _Optional[str] = ..., machine_id: _Optional[str] = ..., e2e_key: _Optional[bytes] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class BusEnvelope(_message.Message):
    __slots__ = ("from_node", "machine_id", "caller_key", "sent_ms", "start", "credit", "cancel", "event", "taken", "echo")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_KEY_FIELD_NUMBER: _ClassVar[int]
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TAKEN_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    machine_id: str
    caller_key: str
    sent_ms: int
    start: CallStart
    credit: Credit
    cancel: Cancel
    event: CallEvent
    taken: Accepted
    echo: Ping
    def __init__(self, from_node: _Optional[str] = ..., machine_id: _Optional[str] = ..., caller_key: _Optional[str] = ..., sent_ms: _Optional[int] = ..., start: _Optional[_Union[CallStart, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., event: _Optional[_Union[CallEvent, _Mapping]] = ..., taken: _Optional[_Union[Accepted, _Mapping]] = ..., echo: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...

class BusPresence(_message.Message):
    __slots__ = ("machine_id", "node", "key_id", "e2e_key", "link_id")
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    E2E_KEY_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    machine_id: str
    node: str
    key_id: str
    e2e_key: bytes
    link_id: str
    def __init__(self, machine_id: _Optional[str] = ..., node: _Optional[str] = ..., key_id: _Optional[str] = ..., e2e_key: _Optional[bytes] = ..., link_id: _Optional[str] = ...) -> None: ...
