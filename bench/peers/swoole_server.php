<?php
/**
 * Swoole anchor: the task frame of PROTOCOL.md served by Swoole's own
 * task workers, modeled on Swoole's documented WebSocket + task example.
 * It is the peer that taskhost is measured against, side by side.
 *
 *   php -d extension=/path/to/swoole.so bench/peers/swoole_server.php
 *
 * `just bench` starts it for its Swoole column when `just swoole` has built the
 * extension (loadgen --peer-swoole PATH). A copy of the team's shared anchor.
 *
 * Environment:
 *   LISTEN          host:port, default 127.0.0.1:9501
 *   WORKERS         worker_num, default 2
 *   TASK_WORKERS    task_worker_num, default 2
 *   TASK_COROUTINE  1: task_enable_coroutine, `slow` sleeps with Coroutine::sleep
 *   SWOOLE_MODE     base (Swoole 6's default) or process
 *
 * Tasks: echo (result = input), slow (sleep input.seconds, default 5; result
 * "success"), fib (naive recursive fib(input.n)).
 */

use Swoole\WebSocket\Server;

[$host, $port] = explode(':', getenv('LISTEN') ?: '127.0.0.1:9501');
$coroutine = getenv('TASK_COROUTINE') === '1';
$mode = getenv('SWOOLE_MODE') === 'process' ? SWOOLE_PROCESS : SWOOLE_BASE;
const TASKS = ['echo', 'slow', 'fib'];

$server = new Server($host, (int)$port, $mode);
$server->set([
    'worker_num' => (int)(getenv('WORKERS') ?: 2),
    'task_worker_num' => (int)(getenv('TASK_WORKERS') ?: 2),
    'task_enable_coroutine' => $coroutine,
    'max_connection' => 10000,
    'log_level' => SWOOLE_LOG_WARNING,
]);

// Swoole's task ids count per worker process; the protocol wants one increasing
// id for the server's run, so a shared-memory counter hands them out.
$taskIds = new Swoole\Atomic(0);

function fib(int $n): int
{
    return $n < 2 ? $n : fib($n - 1) + fib($n - 2);
}

/**
 * Runs one task in a task worker. Returns the job, without its input, plus
 * `result` or `error` => [code, message]: onFinish needs nothing else.
 * `task_worker` says which task worker ran it (Swoole pins a task to one
 * worker when it is dispatched; finished messages show how tasks were spread).
 */
function run_task(Server $server, array $job, bool $coroutine): array
{
    $input = $job['input'];
    unset($job['input']);
    $job['task_worker'] = $server->worker_id;
    switch ($job['task']) {
        case 'echo':
            return $job + ['result' => $input];
        case 'slow':
            $seconds = (float)($input['seconds'] ?? 5);
            $coroutine ? Swoole\Coroutine::sleep($seconds) : usleep((int)($seconds * 1e6));
            return $job + ['result' => 'success'];
        case 'fib':
            return $job + ['result' => fib((int)($input['n'] ?? 20))];
    }
    return $job + ['error' => ['internal', "no task named {$job['task']}"]];
}

function send(Server $server, int $fd, array $message): void
{
    if ($server->isEstablished($fd)) {
        $server->push($fd, json_encode($message));
    }
}

$server->on('open', function (Server $server, $request) {
    send($server, $request->fd, ['type' => 'hello', 'connection_id' => $request->fd,
        'tasks' => TASKS, 'version' => 'swoole-' . SWOOLE_VERSION]);
});

$server->on('message', function (Server $server, $frame) use ($taskIds) {
    $fd = $frame->fd;
    if ($frame->opcode !== WEBSOCKET_OPCODE_TEXT) {
        send($server, $fd, ['type' => 'error', 'error' => ['code' => 'bad_request', 'message' => 'send JSON text frames']]);
        return;
    }
    $msg = json_decode($frame->data, true);
    if (!is_array($msg) || !is_string($msg['type'] ?? null)) {
        // Plain text (the original example's `666`): the default task, `slow`.
        $msg = ['type' => 'task', 'task' => 'slow', 'input' => $frame->data];
    }
    $ref = $msg['ref'] ?? null;
    if ($msg['type'] !== 'task') {
        send($server, $fd, ['type' => 'error', 'error' => ['code' => 'bad_request', 'message' => "unsupported message type {$msg['type']}"]]);
        return;
    }
    $task = $msg['task'] ?? null;
    if (!in_array($task, TASKS, true)) {
        send($server, $fd, ['type' => 'rejected', 'ref' => $ref, 'error' => ['code' => 'unknown_task',
            'message' => 'no task named ' . json_encode($task) . '; tasks are ' . implode(', ', TASKS)]]);
        return;
    }
    $id = $taskIds->add(1);
    $job = ['fd' => $fd, 'id' => $id, 'task' => $task, 'input' => $msg['input'] ?? null,
        'ref' => $ref, 'start' => microtime(true)];
    $swooleTaskId = $server->task($job);
    if ($swooleTaskId === false) {
        send($server, $fd, ['type' => 'rejected', 'ref' => $ref, 'error' => ['code' => 'queue_full',
            'message' => 'the task workers could not take the task; retry later']]);
        return;
    }
    send($server, $fd, ['type' => 'accepted', 'task_id' => $id, 'task' => $task, 'ref' => $ref,
        'limits' => new stdClass(), 'swoole_task_id' => $swooleTaskId]);
});

if ($coroutine) {
    $server->on('task', function (Server $server, Swoole\Server\Task $task) {
        $task->finish(run_task($server, $task->data, true));
    });
} else {
    $server->on('task', function (Server $server, int $taskId, int $srcWorker, array $job) {
        return run_task($server, $job, false);
    });
}

$server->on('finish', function (Server $server, int $taskId, array $done) {
    $common = ['task_id' => $done['id'], 'task' => $done['task'], 'ref' => $done['ref'],
        'elapsed_ms' => (int)round((microtime(true) - $done['start']) * 1000)];
    if (isset($done['error'])) {
        [$code, $message] = $done['error'];
        send($server, $done['fd'], ['type' => 'failed'] + $common + ['error' => ['code' => $code, 'message' => $message]]);
    } else {
        send($server, $done['fd'], ['type' => 'finished'] + $common + ['result' => $done['result'], 'fuel_used' => 0,
            'task_worker' => $done['task_worker']]);
    }
});

$server->on('close', function () {});

$server->start();
