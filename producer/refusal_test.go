package producer

import "testing"

func TestJudgeRefusal(t *testing.T) {
	const ours, theirs = "our-event", "their-event"
	for _, c := range []struct {
		name     string
		expected uint64
		last     lastMsg
		want     refusal
	}{
		{"our earlier attempt landed", 7, lastMsg{seq: 9, id: ours}, refusalLanded},
		{"our first event landed", 0, lastMsg{seq: 3, id: ours}, refusalLanded},
		{"another writer was first", 0, lastMsg{seq: 3, id: theirs}, refusalConflict},
		{"another writer moved the change", 7, lastMsg{seq: 9, id: theirs}, refusalConflict},
		{"at the expected sequence: spurious", 7, lastMsg{seq: 7, id: theirs}, refusalSpurious},
		{"expected no events and there are none: spurious", 0, lastMsg{}, refusalSpurious},
		{"read behind the expected sequence", 7, lastMsg{seq: 5, id: theirs}, refusalBehind},
		{"read finds nothing although we expected an event", 7, lastMsg{}, refusalBehind},
		// A message without a Nats-Msg-Id never matches ours.
		{"newer message without id", 7, lastMsg{seq: 9}, refusalConflict},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := judgeRefusal(c.expected, ours, c.last); got != c.want {
				t.Fatalf("judgeRefusal(%d, %+v) = %d, want %d", c.expected, c.last, got, c.want)
			}
		})
	}
}
