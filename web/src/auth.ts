// The user's token: in memory and sessionStorage (gone when the tab closes), never
// localStorage, never the URL.
const KEY = "orch.token";
const USER_KEY = "orch.user";

let token: string | null = sessionStorage.getItem(KEY);
let user: string | null = sessionStorage.getItem(USER_KEY);

export function currentToken(): string | null {
  return token;
}

export function currentUser(): string | null {
  return user;
}

export function signIn(newToken: string, userName: string): void {
  token = newToken;
  user = userName;
  sessionStorage.setItem(KEY, newToken);
  sessionStorage.setItem(USER_KEY, userName);
}

export function signOut(): void {
  token = null;
  user = null;
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(USER_KEY);
}
